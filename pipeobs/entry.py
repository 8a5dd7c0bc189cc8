"""Loading the entry script, and the ``EntryScript`` helper of ``azureml_user.parallel_run``."""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import traceback
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any

from pipeobs import context, env
from pipeobs.capture import level_number
from pipeobs.errors import EntryScriptError

_PACKAGE_DIR = str(Path(__file__).resolve().parent)


def check_entry_script(path: str | os.PathLike[str]) -> Path:
    """Fail early, in the driver, on a missing, non-Python or syntactically broken script."""
    script = Path(path)
    if not script.exists():
        raise EntryScriptError(f"entry script '{path}' does not exist; check the path")
    if not script.is_file():
        raise EntryScriptError(f"entry script '{path}' is not a file")
    if script.suffix != ".py":
        raise EntryScriptError(f"entry script '{path}' is not a Python file (.py)")
    try:
        source = script.read_bytes()
        compile(source, str(script), "exec")
    except SyntaxError as exc:
        detail = "".join(traceback.format_exception_only(type(exc), exc)).rstrip()
        raise EntryScriptError(f"entry script '{path}' has a syntax error:\n{detail}") from None
    except (OSError, ValueError) as exc:
        raise EntryScriptError(f"entry script '{path}' cannot be read: {exc}") from None
    return script.resolve()


def load_entry_script(path: str) -> ModuleType:
    """Import the script as a module named after its file, with its folder on ``sys.path``."""
    script = Path(path)
    folder = str(script.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location(script.stem, script)
    if spec is None or spec.loader is None:
        raise EntryScriptError(f"entry script '{path}' cannot be imported")
    module = importlib.util.module_from_spec(spec)
    sys.modules[script.stem] = module
    spec.loader.exec_module(module)
    if not callable(getattr(module, "run", None)):
        raise EntryScriptError(
            f"entry script '{path}' has no run() function; define run(mini_batch) "
            "returning a list or a pandas DataFrame"
        )
    return module


def user_traceback(exc: BaseException) -> str:
    """The traceback without pipeobs's own frames at its top."""
    tb: TracebackType | None = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def user_location(exc: BaseException, source_dir: str) -> str | None:
    """``file:line`` of the deepest frame in the user's folder (else the deepest frame)."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith(_PACKAGE_DIR)]
    if not frames:
        return None
    mine = [f for f in frames if f.filename.startswith(source_dir)]
    frame = (mine or frames)[-1]
    return f"{frame.filename}:{frame.lineno}"


def describe_error(exc: BaseException, source_dir: str) -> dict[str, Any]:
    """What the driver needs to know about a user-code error (picklable)."""
    return {
        "type": type(exc).__name__,
        "message": str(exc).strip(),
        "location": user_location(exc, source_dir),
        "traceback": user_traceback(exc),
    }


class _Singleton(type):
    _instance: Any = None

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        if cls._instance is None:
            cls._instance = super().__call__(*args, **kwargs)
        return cls._instance


class _MarkEntryScript(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.pipeobs_entry_script = True
        return True


class EntryScript(metaclass=_Singleton):
    """``azureml_user.parallel_run.EntryScript``: a per-process singleton for entry scripts.

    The logger's records are written by the driver to
    ``logs/user/entry_script_log/<node>/<processNNN>.log.txt`` (and the merged driver log).
    """

    def __init__(self, logging_level: str | None = None) -> None:
        self._level = logging_level
        self._logger: logging.Logger | None = None

    def __reduce__(self) -> tuple[Any, ...]:
        return (EntryScript, ())

    @property
    def _info(self) -> context.WorkerInfo | None:
        return context.worker()

    @property
    def logger(self) -> logging.Logger:
        if self._logger is None:
            info = self._info
            name = f"{info.node}_{info.name}" if info else "ParallelRunStep"
            logger = logging.getLogger(name)
            default = info.logging_level if info else "INFO"
            logger.setLevel(level_number(self._level or default))
            logger.addFilter(_MarkEntryScript())
            if info is None and not logging.getLogger().handlers:
                logging.basicConfig(format="%(asctime)s|%(name)s|%(funcName)s()|%(levelname)s|%(message)s")
            self._logger = logger
        return self._logger

    @property
    def agent_name(self) -> str:
        """The process name, ``processNNN``."""
        info = self._info
        return info.name if info else "agent000"

    @property
    def node_id(self) -> int:
        info = self._info
        return info.node if info else 0

    @property
    def log_dir(self) -> str:
        """``logs/user/entry_script_log/<node>/`` of the run (created)."""
        info = self._info
        path = (
            os.path.join(info.run_dir, "logs", "user", "entry_script_log", str(info.node))
            if info
            else "logs"
        )
        os.makedirs(path, exist_ok=True)
        return path

    @property
    def output_dir(self) -> str:
        info = self._info
        path = info.output_dir if info else os.environ.get(env.OUTPUT_PATH, "output")
        os.makedirs(path, exist_ok=True)
        return path

    @property
    def working_dir(self) -> str:
        """The directory ``pipeobs run`` was started in (workers run in a scratch folder)."""
        info = self._info
        return info.working_dir if info else os.getcwd()
