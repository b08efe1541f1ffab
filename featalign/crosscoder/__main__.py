"""`python -m featalign.crosscoder`: train a crosscoder (the CLI in `featalign.crosscoder.cli`)."""

from featalign.crosscoder.cli import cli

if __name__ == "__main__":
    cli("python -m featalign.crosscoder")
