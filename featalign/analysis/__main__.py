"""`python -m featalign.analysis`: analyse a model set (the CLI in `featalign.analysis.cli`)."""

from featalign.analysis.cli import cli

if __name__ == "__main__":
    cli("python -m featalign.analysis")
