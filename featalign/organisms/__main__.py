"""`python -m featalign.organisms`: build the organisms (the CLI in `featalign.organisms.cli`)."""

from featalign.organisms.cli import cli

if __name__ == "__main__":
    cli("python -m featalign.organisms")
