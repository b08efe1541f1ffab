"""`python -m featalign.crosscoder`: train a crosscoder (the `featalign.train_crosscoder` CLI)."""

from featalign.train_crosscoder import cli

if __name__ == "__main__":
    cli()
