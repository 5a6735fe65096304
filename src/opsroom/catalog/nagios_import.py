"""Nagios object configuration -> a catalog draft, and the list of what could not be translated.

Pure: it is handed (file name, text) pairs and returns data; the CLI reads the files and writes the
draft. Hosts, hostgroups, services and commands are translated, templates (`use`, `register 0`,
`+` additive lists, `null`) resolved; everything else (contacts, notifications, escalations,
dependencies, event handlers, time periods, commands that need a shell, unknown macros) is listed
with its file:line. A command line becomes argv the way sh would split it, never a shell: one
that needs a shell (pipes, redirects, `;`, `$(...)`, backticks, `$VAR`) is listed, not run.
`cfg_file`, `cfg_dir` and `include_*` are never followed: only the files given are read.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from opsroom.catalog.nagios_syntax import (
    HARMLESS,
    IGNORED,
    LOST,
    MAIN_NOT_FOLLOWED,
    SKIPPED_TYPES,
    TRANSLATED,
    NeedsShellError,
    UnknownMacroError,
    arg_macro,
    catalog_name,
    escape_variables,
    expand_macros,
    number,
    shell_program,
    split_args,
    split_command,
    split_list,
    strip_comment,
    unique_name,
)

DEFAULT_USER1 = "/usr/lib/nagios/plugins"
ENVIRONMENT = "imported"
MAX_OBJECTS = 100_000  # a config past this is not a Nagios shop's, it is an attack on the importer
MAX_CHECKS = 50_000  # `host_name *` times many services could otherwise multiply without end
MAX_USE_DEPTH = 32  # Nagios sets no bound; real template chains are 2-5 deep
MAX_COMMAND_LINE = 16_384
PLACEHOLDER = "\ue000"  # marks a secret macro inside a command line until it is written as ${secret:…}

_DEFINE = re.compile(r"define\s+([A-Za-z_]+)\s*\{\s*(.*)$")


class NagiosImportError(Exception):
    """A file that cannot be read as a Nagios object configuration at all."""

    def __init__(self, file: str, line: int, message: str, hint: str) -> None:
        super().__init__(f"{file}:{line}: {message}")
        self.file, self.line, self.message, self.hint = file, line, message, hint


@dataclass
class Skipped:
    """One thing not translated, where it was written, and why."""

    file: str
    line: int
    what: str
    reason: str
    count: int = 1  # objects it stood for (a template directive reaches many services)

    def render(self) -> str:
        more = f" ({self.count} objects)" if self.count > 1 else ""
        return f"{self.file}:{self.line}: {self.what}{more}: {self.reason}"


@dataclass
class Draft:
    catalog: dict[str, Any]
    skipped: list[Skipped]

    def to_yaml(self) -> str:
        """The draft as a catalog file, the skipped list at its top as comments for the reviewer."""
        head = ["# Catalog draft from a Nagios object configuration (opsroom catalog import nagios).",
                "# Review it, then `opsroom catalog validate` it. Not translated:"]
        head += [f"#   {_one_line(s.render())}" for s in self.skipped] or ["#   (nothing)"]
        # libyaml's dumper where built in: 40,000 checks took 12.6 s with the pure-Python one.
        dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
        body = yaml.dump(self.catalog, Dumper=dumper, sort_keys=False, allow_unicode=True, width=120)
        return "\n".join(head) + "\n" + body


@dataclass
class _Obj:
    type: str
    file: str
    line: int
    attrs: dict[str, tuple[str, int]] = field(default_factory=dict)  # directive -> (value, line)

    @property
    def template_name(self) -> str | None:
        got = self.attrs.get("name")
        return got[0] if got else None

    @property
    def label(self) -> str:
        key = {"host": "host_name", "service": "service_description", "command": "command_name",
               "hostgroup": "hostgroup_name"}.get(self.type, f"{self.type}_name")
        got = self.attrs.get(key) or self.attrs.get("name") or self.attrs.get("alias")
        return f"define {self.type} '{got[0]}'" if got else f"define {self.type}"


Resolved = dict[str, tuple[str, str, int]]  # directive -> (value, file, line)


def _one_line(text: str) -> str:
    return re.sub(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]", " ", text)


class _Importer:
    def __init__(self, macros: Mapping[str, str], secret_macros: Mapping[str, str],
                 interval_length: float | None) -> None:
        self.macros = {"USER1": DEFAULT_USER1, **{k.upper(): v for k, v in macros.items()}}
        self.secrets = {k.upper(): v for k, v in secret_macros.items()}
        self.interval_length = interval_length
        self.timeout = 60.0  # Nagios's service_check_timeout default
        self.objects: list[_Obj] = []
        self.skipped: dict[tuple[str, int, str], Skipped] = {}
        self.order: dict[str, int] = {}
        self._memo: dict[int, Resolved] = {}

    def skip(self, file: str, line: int, what: str, reason: str) -> None:
        key = (file, line, reason)
        if key in self.skipped:
            self.skipped[key].count += 1
        else:
            self.skipped[key] = Skipped(file, line, what, reason)

    # --- reading ---------------------------------------------------------

    def read(self, file: str, text: str) -> None:
        self.order.setdefault(file, len(self.order))
        if PLACEHOLDER in text or "\x00" in text:
            raise NagiosImportError(file, 1, "the file holds NUL or private-use characters",
                                    "a Nagios configuration is text; pass the .cfg files themselves")
        current: _Obj | None = None
        defines = main = 0
        for n, raw in enumerate(text.splitlines(), 1):
            line = strip_comment(raw)
            if not line:
                continue
            if current is None:
                found = _DEFINE.match(line)
                if found:
                    defines += 1
                    if len(self.objects) >= MAX_OBJECTS:
                        raise NagiosImportError(file, n, f"more than {MAX_OBJECTS} objects",
                                                "import the configuration in parts")
                    current = _Obj(found.group(1).lower(), file, n)
                    line = found.group(2).strip()
                    if not line:
                        continue
                elif self._main_line(file, n, line):
                    main += 1
                    continue
                else:
                    self.skip(file, n, f"line {line[:40]!r}", "not a Nagios object definition; ignored")
                    continue
            if line.startswith("define") and _DEFINE.match(line):
                raise NagiosImportError(file, n, f"a define inside {current.label} (line {current.line})",
                                        "close the previous definition with `}` first")
            if line == "}":  # only a line of its own: a value may end in `}` (`${x}`, a regex)
                self.objects.append(current)
                current = None
                continue
            key, *value = line.split(None, 1)
            current.attrs.setdefault(key.lower(), (value[0].strip() if value else "", n))
        if current is not None:
            raise NagiosImportError(file, current.line, f"{current.label} is never closed",
                                    "end the definition with a line holding `}`")
        if not defines and not main:
            raise NagiosImportError(file, 1, "no `define` blocks: not a Nagios object configuration",
                                    "pass the object files (hosts.cfg, services.cfg, commands.cfg …)")

    def _main_line(self, file: str, n: int, line: str) -> bool:
        """A nagios.cfg / resource.cfg line: honoured where it shapes checks, else listed."""
        key, eq, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not eq:
            return False
        if key in MAIN_NOT_FOLLOWED:
            self.skip(file, n, f"{key}={value}", "not followed: only the files given are read; pass them too")
        elif key == "interval_length" and self.interval_length is None:
            self.interval_length = number(value) or 60.0
        elif key == "service_check_timeout":
            self.timeout = number(value) or self.timeout
        elif re.fullmatch(r"\$USER\d+\$", key):
            self.skip(file, n, key, "resource macros are not read from files: pass --macro "
                      f"{key.strip('$')}=VALUE, or --secret-macro {key.strip('$')}=SECRET for a password")
        else:
            return re.fullmatch(r"[a-z_0-9]+", key) is not None  # another main setting: no meaning here
        return True

    # --- templates -------------------------------------------------------

    def resolve(self, obj: _Obj, templates: Mapping[str, _Obj], stack: tuple[int, ...] = ()) -> Resolved:
        """The object's directives with what it inherits through `use` (first template wins)."""
        if id(obj) in self._memo:
            return self._memo[id(obj)]
        inherited: Resolved = {}
        use = obj.attrs.get("use")
        for parent_name in reversed(split_list(use[0]) if use else []):
            parent = templates.get(parent_name)
            if parent is None:
                self.skip(obj.file, use[1] if use else obj.line, obj.label, f"template '{parent_name}' is not "
                          "defined (in the files given)")
            elif id(parent) in stack or parent is obj:
                self.skip(obj.file, use[1] if use else obj.line, obj.label, f"`use {parent_name}` is a cycle")
            elif len(stack) >= MAX_USE_DEPTH:
                self.skip(obj.file, use[1] if use else obj.line, obj.label,
                          f"template chain deeper than {MAX_USE_DEPTH}; the rest is not inherited")
            else:
                inherited.update(self.resolve(parent, templates, (*stack, id(obj))))
        own: Resolved = dict(inherited)
        for key, (value, line) in obj.attrs.items():
            if key in ("name", "register", "use"):
                continue
            if value == "null":
                own.pop(key, None)
            elif value.startswith("+") and key in inherited:
                own[key] = (inherited[key][0] + "," + value[1:], obj.file, line)
            else:
                own[key] = (value.removeprefix("+"), obj.file, line)
        if not stack or len(stack) < MAX_USE_DEPTH:
            self._memo[id(obj)] = own
        return own

    def lost(self, what: str, attrs: Resolved) -> None:
        """List each directive that does something in Nagios and nothing here, at the line that set it."""
        for key, (value, file, line) in attrs.items():
            if key in TRANSLATED or key in IGNORED or key.startswith("_"):
                continue
            if HARMLESS.get(key) == value.strip() or key == "event_handler_enabled":
                continue  # nothing lost; an event_handler itself is listed when there is one
            self.skip(file, line, f"{key} {value}"[:80], LOST.get(key, f"`{key}` is not translated ({what})"))

    # --- building --------------------------------------------------------

    def build(self) -> Draft:
        templates: dict[str, dict[str, _Obj]] = {}
        for obj in self.objects:
            if obj.template_name is not None:
                templates.setdefault(obj.type, {}).setdefault(obj.template_name, obj)
        live = [o for o in self.objects if o.attrs.get("register", ("1", 0))[0].strip() != "0"]
        for obj in live:
            if obj.type in SKIPPED_TYPES:
                self.skip(obj.file, obj.line, obj.label, f"{obj.type} definitions are not translated")
            elif obj.type not in ("host", "hostgroup", "service", "command"):
                self.skip(obj.file, obj.line, obj.label, f"unknown object type '{obj.type}'")

        commands = {o.attrs["command_name"][0]: o for o in live if o.type == "command" and "command_name" in o.attrs}
        hosts: dict[str, Resolved] = {}
        for obj in live:
            if obj.type == "host":
                attrs = self.resolve(obj, templates.get("host", {}))
                if "host_name" not in attrs:
                    self.skip(obj.file, obj.line, obj.label, "a host with no host_name")
                    continue
                hosts.setdefault(attrs["host_name"][0], attrs)
                self.lost("host", {k: v for k, v in attrs.items() if k != "check_command"})
                if "check_command" in attrs:
                    value, file, line = attrs["check_command"]
                    self.skip(file, line, f"host check {value}"[:80], "host checks are not translated: add a "
                              "service (e.g. check_ping) if the host's reachability matters")
        groups = self._hostgroups(live, hosts, templates.get("hostgroup", {}))
        return _Builder(self, hosts, groups, commands).build(
            [(o, self.resolve(o, templates.get("service", {}))) for o in live if o.type == "service"])

    def _hostgroups(self, live: list[_Obj], hosts: Mapping[str, Resolved],
                    templates: Mapping[str, _Obj]) -> dict[str, tuple[str, list[str]]]:
        """hostgroup -> (title, member hosts), from `members`, nested `hostgroup_members` and hosts' own lists."""
        defined: dict[str, Resolved] = {}
        for obj in live:
            if obj.type == "hostgroup":
                attrs = self.resolve(obj, templates)
                if "hostgroup_name" in attrs:
                    defined.setdefault(attrs["hostgroup_name"][0], attrs)
        members: dict[str, list[str]] = {g: [] for g in defined}
        for host, attrs in hosts.items():
            for g in split_list(attrs.get("hostgroups", ("", "", 0))[0]):
                members.setdefault(g, []).append(host)
        for g, attrs in defined.items():
            listed = split_list(attrs.get("members", ("", "", 0))[0])
            names = list(hosts) if "*" in listed else listed
            members[g] = [h for h in names if h in hosts] + [h for h in members[g] if h not in names]
        for g, attrs in defined.items():  # one level of nesting per pass, bounded by the group count
            for sub in split_list(attrs.get("hostgroup_members", ("", "", 0))[0])[: len(defined)]:
                members[g] += [h for h in members.get(sub, []) if h not in members[g]]
        return {g: (defined.get(g, {}).get("alias", (g, "", 0))[0], hs) for g, hs in members.items()}


class _Builder:
    """Resolved hosts, groups and services -> the catalog's systems, services and checks."""

    def __init__(self, imp: _Importer, hosts: dict[str, Resolved], groups: dict[str, tuple[str, list[str]]],
                 commands: dict[str, _Obj]) -> None:
        self.imp, self.hosts, self.groups, self.commands = imp, hosts, groups, commands
        self.system_of: dict[str, tuple[str, str, str]] = {}  # host -> (system name, title, description)
        for h, attrs in hosts.items():  # the host's first own hostgroup, else the first that lists it
            mine = [g for g in split_list(attrs.get("hostgroups", ("", "", 0))[0]) if g in groups]
            first = next(iter(mine + [g for g, (_t, members) in groups.items() if h in members]), None)
            if first is not None:
                self.system_of[h] = (catalog_name(first), groups[first][0], f"Nagios hostgroup '{first}'")
        for h, attrs in hosts.items():
            self.system_of.setdefault(h, (catalog_name(h), attrs.get("alias", (h, "", 0))[0], f"Nagios host '{h}'"))
        self.checked: dict[str, tuple[str, int]] = {}  # command_name -> why its command line needs a shell

    def _targets(self, attrs: Resolved) -> list[tuple[str, int]]:
        """(host, priority) the service applies to: named hosts beat hostgroups, as in Nagios."""
        out: dict[str, int] = {}
        excluded: set[str] = set()
        for key, prio in (("host_name", 0), ("hostgroup_name", 1)):
            for item in split_list(attrs.get(key, ("", "", 0))[0]):
                neg = item.startswith("!")
                item = item.removeprefix("!")
                if key == "host_name":
                    names = list(self.hosts) if item == "*" else [item]
                else:
                    names = list(self.hosts) if item == "*" else self.groups.get(item, ("", []))[1]
                for h in names:
                    if neg:
                        excluded.add(h)
                    elif h in self.hosts:
                        out.setdefault(h, prio if item != "*" else 1)
        return [(h, p) for h, p in out.items() if h not in excluded]

    def build(self, services: list[tuple[_Obj, Resolved]]) -> Draft:
        imp = self.imp
        chosen: dict[tuple[str, str], tuple[int, _Obj, Resolved]] = {}
        for obj, attrs in services:
            if "service_description" not in attrs:
                imp.skip(obj.file, obj.line, obj.label, "a service with no service_description")
                continue
            desc = attrs["service_description"][0]
            targets = self._targets(attrs)
            if not targets:
                imp.skip(obj.file, obj.line, f"service '{desc}'", "applies to no host defined in the files given")
            for host, prio in targets:
                key = (host, desc)
                if key not in chosen or prio < chosen[key][0]:
                    if key in chosen:
                        old = chosen[key][1]
                        imp.skip(old.file, old.line, f"service '{desc}' on {host}", "overridden by a more "
                                 f"specific definition at {obj.file}:{obj.line}")
                    chosen[key] = (prio, obj, attrs)
                else:
                    imp.skip(obj.file, obj.line, f"service '{desc}' on {host}", "defined again: the first "
                             f"definition at {chosen[key][1].file}:{chosen[key][1].line} is used")
        if len(chosen) > MAX_CHECKS:
            raise NagiosImportError("(all files)", 1, f"{len(chosen)} service checks, more than {MAX_CHECKS}",
                                    "import the configuration in parts")
        systems_of_desc: dict[str, set[str]] = {}
        for (host, desc) in chosen:
            systems_of_desc.setdefault(desc, set()).add(self.system_of[host][0])
        systems: dict[str, dict[str, Any]] = {}
        svcs: dict[tuple[str, str], dict[str, Any]] = {}
        checks: list[dict[str, Any]] = []
        names: dict[str, set[str]] = {"service": set(), "check": set()}
        for (host, desc), (_prio, obj, attrs) in sorted(chosen.items(), key=lambda kv: (
                imp.order.get(kv[1][1].file, 0), kv[1][1].line, kv[0][0])):
            argv = self._argv(obj, attrs, host)
            imp.lost("service", attrs)
            if argv is None:
                continue
            system, title, about = self.system_of[host]
            systems.setdefault(system, {"name": system, "title": title, "environment": ENVIRONMENT,
                                        "description": about})
            if (system, desc) not in svcs:
                base = catalog_name(desc) if len(systems_of_desc[desc]) == 1 else catalog_name(f"{system}-{desc}")
                svcs[(system, desc)] = {"name": unique_name(base, names["service"]), "title": desc, "system": system}
            service = svcs[(system, desc)]["name"]
            name = unique_name(catalog_name(f"{service}-{host}"), names["check"])
            check: dict[str, Any] = {"name": name, "type": "command", "service": service, "argv": argv}
            check.update(self._timing(attrs))
            check["description"] = f"Nagios service '{desc}' on host '{host}' ({obj.file}:{obj.line})"
            checks.append(check)
        catalog: dict[str, Any] = {"environments": [{"name": ENVIRONMENT}], "systems": list(systems.values()),
                                   "services": list(svcs.values()), "checks": checks}
        catalog = escape_variables(catalog)
        for check in catalog["checks"]:  # secret macros last: their ${secret:…} is meant for the loader
            check["argv"] = [self._unmask(a) for a in check["argv"]]
        skipped = sorted(imp.skipped.values(), key=lambda s: (imp.order.get(s.file, 0), s.line, s.reason))
        return Draft(catalog, skipped)

    def _timing(self, attrs: Resolved) -> dict[str, Any]:
        imp, out = self.imp, {}
        unit = imp.interval_length or 60.0
        interval = self.number(attrs, ("check_interval", "normal_check_interval"), 5.0) * unit
        retry = self.number(attrs, ("retry_interval", "retry_check_interval"), 1.0) * unit
        attempts = int(self.number(attrs, ("max_check_attempts",), 3.0))
        out = {"interval": f"{max(interval, 1.0):g}s", "retry_interval": f"{max(retry, 1.0):g}s",
               "max_attempts": min(max(attempts, 1), 100), "timeout": f"{min(imp.timeout, max(interval, 1.0)):g}s"}
        if attrs.get("active_checks_enabled", ("1", "", 0))[0].strip() == "0":
            out["enabled"] = False
        low = self.number(attrs, ("low_flap_threshold",), 0.0)
        high = self.number(attrs, ("high_flap_threshold",), 0.0)
        if 0 < low <= high <= 100:
            out["flap_low"], out["flap_high"] = low / 100, high / 100
        return out

    def number(self, attrs: Resolved, keys: tuple[str, ...], default: float) -> float:
        for key in keys:
            if key in attrs:
                value, file, line = attrs[key]
                got = number(value)
                if got is not None and got >= 0:
                    return got
                self.imp.skip(file, line, f"{key} {value}"[:80], f"not a number; Nagios's default {default:g} used")
        return default

    def _argv(self, obj: _Obj, attrs: Resolved, host: str) -> list[str] | None:
        """The service's check_command resolved to argv, or None (listed) when it cannot be."""
        imp = self.imp
        desc = attrs["service_description"][0]
        what = f"service '{desc}' on {host}"
        if "check_command" not in attrs:
            imp.skip(obj.file, obj.line, what, "no check_command")
            return None
        text, file, line = attrs["check_command"]
        name, *args = split_args(text)
        command = self.commands.get(name.strip())
        if command is None or "command_line" not in command.attrs:
            imp.skip(file, line, what, f"command '{name.strip()}' is not defined (in the files given)")
            return None
        cmd_line, cmd_at = command.attrs["command_line"]
        if name not in self.checked:  # the command line itself, macros aside: reported once at its own line
            try:
                split_command(re.sub(r"\$[A-Za-z0-9_]+\$", "x", cmd_line))
                self.checked[name] = ("", 0)
            except NeedsShellError as exc:
                self.checked[name] = (str(exc), cmd_at)
        reason, _ = self.checked[name]
        if reason:
            imp.skip(command.file, cmd_at, f"command '{name}'", f"needs a shell ({reason}); opsroom runs no shell: "
                     "write a small plugin script instead")
            return None
        try:
            lookup = self._macros(host, attrs)
            expanded_args = [expand_macros(a, lookup) for a in args]
            resolved = expand_macros(cmd_line, lambda m: arg_macro(m, expanded_args) if m.startswith("ARG")
                                     else lookup(m))
            if len(resolved) > MAX_COMMAND_LINE:
                raise NeedsShellError(f"the command line is longer than {MAX_COMMAND_LINE} characters")
            argv = split_command(resolved)
            program = shell_program(argv)
            if program is not None:
                raise NeedsShellError(f"it runs the shell `{program}`")
        except UnknownMacroError as exc:
            imp.skip(file, line, what, f"unknown macro ${exc.args[0]}$ (opsroom checks have no runtime macros; "
                     "for $USERn$ pass --macro USERn=VALUE)")
            return None
        except NeedsShellError as exc:
            imp.skip(file, line, what, f"needs a shell once its arguments are filled in ({exc}); nothing of it "
                     "is run")
            return None
        return argv

    def _macros(self, host: str, attrs: Resolved) -> Callable[[str], str]:
        imp, h = self.imp, self.hosts[host]
        plain = {"HOSTNAME": host, "HOSTADDRESS": h.get("address", (host, "", 0))[0],
                 "HOSTALIAS": h.get("alias", (host, "", 0))[0], "HOSTDISPLAYNAME": h.get("display_name", (host,))[0],
                 "SERVICEDESC": attrs["service_description"][0],
                 "SERVICEDISPLAYNAME": attrs.get("display_name", attrs["service_description"])[0]}
        plain.update({f"_HOST{k[1:].upper()}": v[0] for k, v in h.items() if k.startswith("_")})
        plain.update({f"_SERVICE{k[1:].upper()}": v[0] for k, v in attrs.items() if k.startswith("_")})
        secret_names = sorted(imp.secrets)

        def lookup(name: str) -> str:
            if name in imp.secrets:
                return f"{PLACEHOLDER}{secret_names.index(name)}{PLACEHOLDER}"
            if name in imp.macros:
                return imp.macros[name]
            if name in plain:
                return plain[name]
            raise UnknownMacroError(name)

        return lookup

    def _unmask(self, text: str) -> str:
        names = sorted(self.imp.secrets)
        return re.sub(f"{PLACEHOLDER}(\\d+){PLACEHOLDER}",
                      lambda m: "${secret:" + self.imp.secrets[names[int(m.group(1))]] + "}", text)


def import_nagios(sources: Sequence[tuple[str, str]], *, macros: Mapping[str, str] | None = None,
                  secret_macros: Mapping[str, str] | None = None, interval_length: float | None = None) -> Draft:
    """Translate Nagios object files (name, text) into a catalog draft and the list of what was not."""
    imp = _Importer(macros or {}, secret_macros or {}, interval_length)
    for file, text in sources:
        imp.read(file, text)
    return imp.build()


__all__ = ["DEFAULT_USER1", "Draft", "NagiosImportError", "Skipped", "import_nagios"]
