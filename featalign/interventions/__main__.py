"""`python -m featalign.interventions`: edit a crosscoder's features in a live model (the CLI in
`featalign.interventions.cli`)."""

from featalign.interventions.cli import cli

if __name__ == "__main__":
    cli("python -m featalign.interventions")
