"""Folders as content-addressed blobs: pack, store in a JetStream Object Store bucket, fetch, unpack.

Used for a job's ``workdir`` (the CLI/SDK packs the user's folder, the submission API stores it in
the ``<prefix>_workdirs`` bucket, the executor unpacks it into the attempt's work dir), and meant
for any other folder that travels between machines the same way: a pipeline step's outputs handed
to its dependents (``$TRAINYARD_INPUTS/<step>/``) go through :func:`pack_dir`, :func:`put_blob`,
:func:`get_blob` and :func:`unpack_into` unchanged, in a bucket of their own
(:func:`trainyard_shared.bus.object_store_configs`).

- :mod:`.pack`: deterministic gzip'd tar of a folder (``.gitignore`` / ``.trainyardignore``
  honoured, links out of the tree and devices refused, size-capped with the biggest files named).
- :mod:`.unpack`: the hostile side: every member checked, nothing followed, sizes counted.
- :mod:`.store`: put once by digest, get checked against the digest.
"""

from trainyard_shared.blobs.pack import IGNORE_FILE, Packed, PackError, PackLimits, digest_of, pack_dir
from trainyard_shared.blobs.store import (
    DIGEST_PATTERN,
    BlobMissing,
    BlobTooLarge,
    check_digest,
    get_blob,
    has_blob,
    open_store,
    put_blob,
)
from trainyard_shared.blobs.unpack import UnpackLimits, UnsafeArchive, check_archive, unpack_into

__all__ = [
    "DIGEST_PATTERN",
    "IGNORE_FILE",
    "BlobMissing",
    "BlobTooLarge",
    "PackError",
    "PackLimits",
    "Packed",
    "UnpackLimits",
    "UnsafeArchive",
    "check_archive",
    "check_digest",
    "digest_of",
    "get_blob",
    "has_blob",
    "open_store",
    "pack_dir",
    "put_blob",
    "unpack_into",
]
