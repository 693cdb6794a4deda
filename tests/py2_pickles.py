"""Pickles as Python 2 wrote them, for the data sets distributed that way (CIFAR-100, tieredImageNet).

Python 3 writes ``bytes`` as ``bytes`` (protocol 3+) or through ``_codecs.encode`` (protocol 2);
Python 2 wrote its ``str`` with the BINSTRING opcodes, which Python 3 reads back as text under
``encoding='latin1'``. This pickler writes ``bytes`` that way, so ``{b"data": array}`` comes out
as Python 2's ``{'data': array}`` did, array bytes included.
"""

from __future__ import annotations

import io
import pickle
import struct


class Py2Pickler(pickle._Pickler):
    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def py2_dumps(obj) -> bytes:
    buffer = io.BytesIO()
    Py2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()
