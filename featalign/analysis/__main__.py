"""`python -m featalign.analysis`: analyse a model set (the `featalign.analyze` CLI)."""

from featalign.analyze import cli

if __name__ == "__main__":
    cli()
