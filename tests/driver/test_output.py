"""The append_row output file: buffered appends, the header once, cut back to the committed length."""

from __future__ import annotations

from pathlib import Path

from pipeobs.driver.output import OutputFile


class TestOutputFile:
    def test_rows_reach_the_file_at_flush_and_size_counts_them_before(self, tmp_path: Path) -> None:
        """size includes buffered rows (the ledger commits it); the bytes land at flush()."""
        path = tmp_path / "out" / "rows.txt"
        out = OutputFile(str(path))
        out.open(0)

        out.append(b"a\nb\n")

        assert out.size == 4 and path.read_bytes() == b""
        out.flush()
        assert path.read_bytes() == b"a\nb\n"
        out.close()

    def test_open_cuts_the_file_back_to_the_committed_length(self, tmp_path: Path) -> None:
        """Resume: rows past the last committed length (written before a kill) are dropped."""
        path = tmp_path / "rows.txt"
        path.write_bytes(b"done\nhalf-written\n")
        out = OutputFile(str(path))

        out.open(5)
        out.append(b"again\n")
        out.close()

        assert path.read_bytes() == b"done\nagain\n"

    def test_the_dataframe_header_is_written_once_at_the_top(self, tmp_path: Path) -> None:
        """--append-row-dataframe-header: the first rows bring the header, later ones do not."""
        path = tmp_path / "rows.txt"
        out = OutputFile(str(path), header=True)
        out.open(0)

        out.append(b"1 2\n", b"a b\n")
        out.append(b"3 4\n", b"a b\n")
        out.close()

        assert path.read_bytes() == b"a b\n1 2\n3 4\n"

    def test_no_path_means_summary_only_and_nothing_is_written(self, tmp_path: Path) -> None:
        """summary_only: appends are ignored."""
        out = OutputFile(None)
        out.open(0)

        out.append(b"x\n")
        out.close()

        assert out.size == 0
