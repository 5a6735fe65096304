"""The catalog: environments, systems, services, checks, runbooks, rules, rooms as YAML."""
