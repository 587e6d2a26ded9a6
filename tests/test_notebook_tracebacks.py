"""A gpuad error in an IPython cell shows gpuad's message and the user's frames; numba's and
gpuad's internals only with gpuad.config.verbose (issue 13). Run in a fresh process: the handler
is installed on IPython's one shell."""
import subprocess
import sys
import textwrap

CELLS = textwrap.dedent('''
    import sys
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "gpuad")
    shell.run_cell("""
    import numpy as np
    import gpuad
    from gpuad import Active, Reverse, autodiff

    def f(x):
        return x * x

    def k(ns, out):
        i = gpuad.thread_index()
        if i < ns.shape[0]:
            (d,), = autodiff(Reverse, f, Active(ns[i]))
            out[i] = d
    """)
    shell.run_cell("gpuad.config.verbose = {verbose}")
    shell.run_cell("gpuad.kernel(k, target='cpu').launch(2, np.arange(2), np.zeros(2))")
''')


def cell_error(verbose: bool) -> str:
    done = subprocess.run([sys.executable, "-c", CELLS.format(verbose=verbose)], capture_output=True,
                          text=True, timeout=180, env={"GPUAD_TARGET": "cpu", "PATH": "", "HOME": "/tmp"})
    return done.stdout + done.stderr


def test_a_gpuad_error_in_a_cell_is_its_message_and_the_users_frames():
    text = cell_error(verbose=False)
    assert "LoweringError: " in text and "a derivative that is None was stored" in text
    assert "<ipython-input" in text or "Cell In" in text or 'File "<' in text  # the cell's frame
    assert "numba" + "/core" not in text and "site-packages" not in text and "gpuad/kernel.py" not in text
    assert "direct cause" not in text  # numba's chained exception is not printed
    assert len(text.splitlines()) < 25, text


def test_verbose_shows_the_internal_frames():
    text = cell_error(verbose=True)
    assert "gpuad/kernel.py" in text and "direct cause" in text
