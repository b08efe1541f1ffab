"""`python -m featalign.activations`: cache activations (the CLI in `featalign.activations.cli`)."""

from featalign.activations.cli import cli

if __name__ == "__main__":
    cli("python -m featalign.activations")
