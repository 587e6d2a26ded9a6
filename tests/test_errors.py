"""gpuad errors survive pickling whole (a Dask worker's error reaches the client as it was)."""
import pickle

import pytest

from gpuad.errors import LaunchError, LocalMemoryExceeded, SourceLocation, TapeOverflow, UnsupportedConstruct
from gpuad.notebook.extras import MissingNotebookExtra

WHERE = SourceLocation("cell.py", 7, "loop", "f")


@pytest.mark.parametrize("error", [
    TapeOverflow("a loop overflowed", WHERE, hint="raise the capacity"),
    UnsupportedConstruct("cannot differentiate `x`", WHERE, "rewrite it"),
    LocalMemoryExceeded("too much local memory", None, hint="checkpoint"),
    LaunchError("bad launch"),
    MissingNotebookExtra("pygments", "CompilationView"),
])
def test_an_error_unpickles_with_its_class_location_hint_and_text(error):
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is type(error) and str(again) == str(error)
    assert (again.message, again.location, again.hint) == (error.message, error.location, error.hint)
    assert vars(again) == vars(error)
