#!/bin/sh
# Write the env files deploy/compose.yaml reads, each secret fresh and random, mode 0600.
# Never overwrites one: remove a file to have it written again. Then, once RabbitMQ runs,
# create the workers' broker users with ./mq-users.sh.
set -eu
cd "$(dirname "$0")"
umask 077
secret() { python3 -c 'import secrets; print(secrets.token_urlsafe(24))'; }
write() { # FILE, then its lines on stdin
    if [ -e "$1" ]; then echo "kept $1 (exists)"; cat >/dev/null; return; fi
    cat >"$1"; echo "wrote $1"
}
[ -e postgres.env ] && pg=$(sed -n 's/^POSTGRES_PASSWORD=//p' postgres.env) || pg=$(secret)
[ -e rabbitmq.env ] && mq=$(sed -n 's/^RABBITMQ_DEFAULT_PASS=//p' rabbitmq.env) || mq=$(secret)
prod=$(secret)
test=$(secret)
db="postgresql://opsroom:$pg@postgres:5432/opsroom"
write postgres.env <<END
POSTGRES_USER=opsroom
POSTGRES_PASSWORD=$pg
POSTGRES_DB=opsroom
END
write rabbitmq.env <<END
RABBITMQ_DEFAULT_USER=opsroom-server
RABBITMQ_DEFAULT_PASS=$mq
RABBITMQ_DEFAULT_VHOST=opsroom
END
write opsroom.env <<END
OPSROOM_DATABASE_URL=$db
OPSROOM_BROKERS={"prod": "amqp://opsroom-server:$mq@rabbitmq:5672/opsroom", "test": "amqp://opsroom-server:$mq@rabbitmq:5672/opsroom"}
OPSROOM_PUBLIC_URL=https://opsroom.example
END
write worker-prod.env <<END
OPSROOM_DATABASE_URL=$db
OPSROOM_BROKERS={"prod": "amqp://opsroom-prod:$prod@rabbitmq:5672/opsroom"}
END
write worker-test.env <<END
OPSROOM_DATABASE_URL=$db
OPSROOM_BROKERS={"test": "amqp://opsroom-test:$test@rabbitmq:5672/opsroom"}
END
