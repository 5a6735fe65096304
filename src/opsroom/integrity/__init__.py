"""File integrity monitoring: a signed baseline of the catalog, its runbooks' scripts and
configured paths; inotify plus scheduled rescans; quarantine of changed protected runbooks."""
