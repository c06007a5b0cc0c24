"""licexp's Hydra configs, installed as the package ``licexp.conf`` (see pyproject.toml)."""
