"""``python -m placer`` runs the CLI."""

from placer.cli import main

if __name__ == "__main__":  # worker processes spawned by --scheduler local:N import this module
    main()
