"""icf-utils: the shared library behind the four scripts in ``bin/``.

Modules, one job each:

- :mod:`icf.store`   the store's layout, study/visit IDs, derived UUIDs
- :mod:`icf.dicom`   reading DICOM headers, timestamps and tag values
- :mod:`icf.tarball` writing reproducible TARs and reading them back safely
- :mod:`icf.output`  atomic output files and deterministic JSON
- :mod:`icf.cli`     the options, messages and exit codes all scripts share
"""


class IcfError(Exception):
    """An input or state a tool cannot handle faithfully (exit status 1).

    The message is one line and names the offending file(s).
    """
