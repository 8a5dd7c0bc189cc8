"""``azureml.core.Dataset`` in workers: it imports; workspace lookups fail when called, saying why."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from pipeobs import azureml
from pipeobs.datasets import FileDataset, TabularDataset
from pipeobs.errors import ConfigError
from tests.conftest import RunJob

SHIMS = str(Path(azureml.__file__).parent / "_shims")


@pytest.fixture
def shims(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The worker's sys.path: the shims appended, and no azureml module imported before."""
    monkeypatch.syspath_prepend(SHIMS)  # prepended: an installed azureml-core must not be the one tested
    saved = {name: module for name, module in sys.modules.items() if name == "azureml" or name.startswith("azureml.")}
    for name in saved:
        del sys.modules[name]
    yield
    for name in [n for n in sys.modules if n == "azureml" or n.startswith("azureml.")]:
        del sys.modules[name]
    sys.modules.update(saved)


def shim(module: str) -> ModuleType:
    return importlib.import_module(module)


@pytest.mark.usefixtures("shims")
class TestImports:
    def test_from_azureml_core(self) -> None:
        """``from azureml.core import Dataset`` gives pipeobs's stand-in."""
        assert shim("azureml.core").Dataset is azureml.Dataset

    def test_from_azureml_core_dataset(self) -> None:
        """``from azureml.core.dataset import Dataset`` gives the same class."""
        assert shim("azureml.core.dataset").Dataset is azureml.Dataset


class TestWorkspaceLookups:
    @pytest.mark.parametrize(
        ("call", "name"),
        [
            (lambda: azureml.Dataset.get_by_name(object(), "iris"), "Dataset.get_by_name"),
            (lambda: azureml.Dataset.get_by_id(object(), "0000"), "Dataset.get_by_id"),
            (lambda: azureml.Dataset.get_all(object()), "Dataset.get_all"),
            (lambda: azureml.Dataset.Tabular.from_sql_query(("ds", "select 1")), "Dataset.Tabular.from_sql_query"),
            (
                lambda: azureml.Dataset.Tabular.register_pandas_dataframe(None, None, "x"),
                "Dataset.Tabular.register_pandas_dataframe",
            ),
            (lambda: azureml.Dataset.File.upload_directory("src", None), "Dataset.File.upload_directory"),
        ],
    )
    def test_fails_when_called_with_where_inputs_come_from(self, call: object, name: str) -> None:
        """A call that needs a workspace raises ConfigError naming the call and the step's inputs."""
        with pytest.raises(ConfigError) as raised:
            call()  # type: ignore[operator]

        message = str(raised.value)
        assert message.startswith(f"{name}(): pipeobs runs the entry script locally")
        assert "run() as its mini_batch" in message and "--input" in message


class TestLocalConstructors:
    def test_file_from_files_is_a_pipeobs_file_dataset(self, tmp_path: Path) -> None:
        """Dataset.File.from_files(local path) is pipeobs's FileDataset of those files."""
        (tmp_path / "a.txt").write_text("a")

        dataset = azureml.Dataset.File.from_files(str(tmp_path), validate=False, partition_format=None)

        assert dataset == FileDataset.from_files(str(tmp_path))
        assert dataset.files() == [str(tmp_path / "a.txt")]

    def test_tabular_constructors_are_pipeobs_tabular_datasets(self, tmp_path: Path) -> None:
        """The Tabular constructors pass separator, header, encoding and partition_format through."""
        csv = str(tmp_path / "t.tsv")

        delimited = azureml.Dataset.Tabular.from_delimited_files(
            csv, separator="\t", header=False, encoding="utf8", include_path=False
        )
        parquet = azureml.Dataset.Tabular.from_parquet_files(csv, partition_format="{name}.tsv")
        lines = azureml.Dataset.Tabular.from_json_lines_files(csv, encoding="iso88591")

        assert delimited == TabularDataset.from_delimited_files(csv, separator="\t", header=False)
        assert parquet == TabularDataset.from_parquet_files(csv, partition_format="{name}.tsv")
        assert lines == TabularDataset.from_json_lines_files(csv, encoding="iso88591")

    def test_unsupported_option_is_refused_by_name(self) -> None:
        """An Azure option pipeobs cannot honour raises instead of being ignored."""
        with pytest.raises(ConfigError, match=r"from_delimited_files\(\): pipeobs does not support include_path=True"):
            azureml.Dataset.Tabular.from_delimited_files("t.csv", include_path=True)


class TestInAWorker:
    def test_entry_script_imports_dataset_and_calls_fail_in_run(self, run_job: RunJob) -> None:
        """An entry script importing Dataset loads; get_by_name() in run() fails that mini-batch with the message."""
        job = run_job(
            """
            from azureml.core import Dataset
            from azureml.core.dataset import Dataset as Same

            def run(mini_batch):
                assert Dataset is Same
                Dataset.get_by_name(None, "lookup")
            """,
            files=1,
            error_threshold=-1,
            run_max_try=1,
        )

        ((error_type, message),) = [tuple(row) for row in job.query("SELECT error_type, error_message FROM attempts")]
        assert job.result.items_failed == 1
        assert error_type == "ConfigError"
        assert message.startswith("Dataset.get_by_name(): pipeobs runs the entry script locally")
