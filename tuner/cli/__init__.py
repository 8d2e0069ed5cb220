"""cli — the command line: typer commands, one module per group, each command a few lines calling one library
function; and the terminal views (ui.py). The only place that prints.

May import every wing. Nothing imports the cli.
"""
