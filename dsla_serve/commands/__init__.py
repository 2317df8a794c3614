"""`dsla-serve` subcommands of the serving application: serve, deploy, build, status (`status_view`
renders the status for the terminal).

Each command module has HELP, add_arguments(parser) and run(args) -> int (the dispatcher's contract in
`dsla_serve/cli.py`).
"""
