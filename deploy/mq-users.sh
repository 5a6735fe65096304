#!/bin/sh
# Create each worker's RabbitMQ user with the password in its env file, allowed only its own
# environment's queue and exchange (opsroom.ENV): a test worker cannot read the prod queue.
set -eu
cd "$(dirname "$0")"
for env in prod test; do
    pass=$(sed -n "s|.*amqp://opsroom-$env:\([^@]*\)@.*|\1|p" "worker-$env.env")
    docker compose exec -T rabbitmq rabbitmqctl add_user "opsroom-$env" "$pass" 2>/dev/null ||
        docker compose exec -T rabbitmq rabbitmqctl change_password "opsroom-$env" "$pass"
    docker compose exec -T rabbitmq rabbitmqctl set_permissions -p opsroom "opsroom-$env" \
        "^opsroom\\.$env\$" "^opsroom\\.$env\$" "^opsroom\\.$env\$"
done
