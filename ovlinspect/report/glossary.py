"""The words ovlinspect uses for overlayfs, each in one line (the view's help, ``--help``)."""

from __future__ import annotations

#: term -> its one-line explanation, in the order a newcomer meets them
TERMS: dict[str, str] = {
    "upper layer": "the writable layer on top (upperdir): changes made through the mount land here",
    "lower layer": "a read-only layer below (lowerdir), the topmost first; its entries show through "
                   "where no layer above has the name",
    "data-only layer": "a lower layer after '::' (lowerdir=A::B, Linux 6.5+): never merged into the "
                       "tree, only read for the data an absolute metacopy redirect names",
    "merged directory": "a directory present in several layers: readdir lists the union of their names",
    "non-merged": "a directory from one layer only: readdir passes its listing through unchanged "
                  "(whiteouts and all)",
    "whiteout": "a name deleted in an upper layer: a 0/0 character device (or an xattr whiteout) that "
                "hides the name in the layers below",
    "xwhiteout": "an xattr whiteout: an empty file with overlay.whiteout, honoured only in a "
                 "directory marked opaque=x (Linux 6.7+; composefs writes them)",
    "opaque": "a directory with overlay.opaque=y: it hides the layers below it (rmdir then mkdir)",
    "redirect": "overlay.redirect: where the lookup continues in the layers below (a renamed "
                "directory, a metacopy's data)",
    "absolute redirect": "a redirect starting with '/': looked up again from the root of every layer "
                         "below, regular layers first, then the data-only layers",
    "metacopy": "overlay.metacopy: the file's metadata only; read() returns the bytes of the file "
                "a layer below (or its redirect) names",
    "origin": "overlay.origin: a file handle of the lower object an upper entry was copied up from",
    "impure": "overlay.impure: an upper directory holding copied-up or redirected entries, whose "
              "inode numbers readdir must look up",
    "index": "the work directory's index/ (index=on): copied-up files by their origin's handle, "
             "checked at mount and lookup (ESTALE when they no longer match)",
    "shadowing": "a regular layer holding a path an absolute redirect names: it serves its bytes "
                 "instead of the data-only layer's (wrong data, no error)",
}
