"""What ansible-core adds to a module's result, for the agent modules that return as it does."""

from __future__ import annotations

import grp
import os
import pwd
import stat
from typing import Any, Dict


def path_info(path: str) -> Dict[str, Any]:
    """What ansible-core adds to a result that names a ``path``: its kind (as ``state``), owner, mode, size."""
    try:
        st = os.lstat(path)
    except OSError:
        return {"state": "absent"}
    kind = "link" if stat.S_ISLNK(st.st_mode) else "directory" if stat.S_ISDIR(st.st_mode) else "file"
    info = {"state": kind, "uid": st.st_uid, "gid": st.st_gid, "mode": "0%03o" % stat.S_IMODE(st.st_mode)}
    info["owner"] = name_of(pwd.getpwuid, st.st_uid)
    info["group"] = name_of(grp.getgrgid, st.st_gid)
    info["size"] = st.st_size
    return info


def name_of(lookup: Any, ident: int) -> Any:
    try:
        return lookup(ident)[0]
    except KeyError:
        return ident
