"""CLI sub-commands, one module each (see ``kontrast.cli.COMMANDS``)."""
