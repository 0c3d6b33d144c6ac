"""`muselab serve`: a REST API, a web page and a gallery over trained runs (FastAPI + uvicorn, the `serve`
extra). Every request takes the generation pipeline's one path; see `muselab.serve.app`."""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from muselab.core.errors import ConfigError

__all__ = ["require_serving", "run_server"]

INSTALL_HINT = "muselab serve needs FastAPI and uvicorn: pip install 'muselab[serve]'"


def require_serving() -> None:
    """One line saying how to get the server's dependencies when they are missing."""
    missing = [name for name in ("fastapi", "uvicorn") if importlib.util.find_spec(name) is None]
    if importlib.util.find_spec("python_multipart") is None and importlib.util.find_spec("multipart") is None:
        missing.append("python-multipart")
    if missing:
        raise ConfigError(f"{INSTALL_HINT} (missing: {', '.join(missing)})")


def run_server(runs: Sequence[str], *, host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
               api_key: str | None = None, gallery: str = "muselab-gallery", cors: Sequence[str] = (),
               device: str = "cpu", limits: dict | None = None) -> None:
    """Serve the runs until interrupted (`muselab serve`)."""
    require_serving()
    import uvicorn

    from muselab.serve.models import Limits

    for run in runs:
        if not (Path(run) / "config.json").is_file():
            raise ConfigError(f"'{run}' is not a run directory (no config.json); train one with `muselab train`")
    settings = {"runs": [str(r) for r in runs], "gallery": str(gallery), "api_key": api_key, "cors": list(cors),
                "device": device, "limits": asdict(Limits(**(limits or {})))}
    if workers > 1:
        # each worker process builds its own app (and loads the models) from these settings
        os.environ["MUSELAB_SERVE_SETTINGS"] = json.dumps(settings)
        uvicorn.run("muselab.serve.app:app_from_environment", factory=True, host=host, port=port, workers=workers,
                    log_level="info", timeout_graceful_shutdown=5)
        return
    from muselab.serve.app import create_app

    app = create_app(runs, gallery=gallery, api_key=api_key, limits=Limits(**(limits or {})), cors_origins=cors,
                     device=device)
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=5)
