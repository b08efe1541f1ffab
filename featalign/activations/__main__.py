"""`python -m featalign.activations`: cache activations (the `featalign.cache` CLI)."""

from featalign.cache import cli

if __name__ == "__main__":
    cli()
