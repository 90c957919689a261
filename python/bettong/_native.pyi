"""Type stub of the native module (python/src): the engine as seen from Python."""

from typing import Any, Optional

class Running:
    """A running engine (see bettong.Running, which wraps it)."""

    @property
    def local_addr(self) -> Optional[str]: ...
    @property
    def cores(self) -> int: ...
    def stop(self) -> None: ...
    def join(self) -> tuple[str, list[bytes], int]: ...

def start(
    plan: dict[str, Any],
    cores: Optional[int] = None,
    on_error: str = "reject",
    resilience_dir: Optional[str] = None,
    checkpoint_interval: float = 1.0,
    metrics_addr: Optional[str] = None,
) -> Running: ...
def stop_on_signals(running: Running) -> None: ...
def gil_acquisitions() -> int: ...
