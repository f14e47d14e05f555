"""Ask for a client certificate without verifying it (exporter-toolkit's RequestClientCert and
RequireAnyClientCert, Go's tls.RequestClientCert / tls.RequireAnyClientCert).

Python's `ssl` module verifies every certificate a client presents against the loaded CAs
and has no switch for "take whatever comes". OpenSSL has one: a verify callback that
accepts. The stdlib keeps an existing callback when verify_mode is set, so installing one
on the context's SSL_CTX through ctypes gives Go's semantics. The pointer is read from the
SSLContext object and checked against OpenSSL's own view of the verify mode before use; if
anything does not line up the caller gets an error at start, never a silently verifying or
crashing server.
"""

from __future__ import annotations

import ctypes
import ssl

_VERIFY_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p)


@_VERIFY_CALLBACK
def _accept(_preverify_ok: int, _store: int | None) -> int:
    return 1


# OpenSSL's SSL_VERIFY_* bits as Python's ssl maps its verify modes onto them.
_OPENSSL_MODE = {ssl.CERT_NONE: 0, ssl.CERT_OPTIONAL: 1, ssl.CERT_REQUIRED: 3}


class Unsupported(Exception):
    pass


def _libssl() -> ctypes.CDLL:
    import _ssl

    lib = ctypes.CDLL(_ssl.__file__)
    lib.SSL_CTX_get_verify_mode.restype = ctypes.c_int
    lib.SSL_CTX_get_verify_mode.argtypes = [ctypes.c_void_p]
    lib.SSL_CTX_set_verify.restype = None
    lib.SSL_CTX_set_verify.argtypes = [ctypes.c_void_p, ctypes.c_int, _VERIFY_CALLBACK]
    return lib


def _ssl_ctx_pointer(ctx: ssl.SSLContext) -> int:
    # CPython's PySSLContext starts with its SSL_CTX* right after the object header.
    pointer = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
    if not pointer:
        raise Unsupported("no SSL_CTX pointer")
    return pointer


def accept_unverified(ctx: ssl.SSLContext, required: bool) -> None:
    """Request (or, with `required`, demand) a client certificate and accept it unverified."""
    ctx.verify_mode = ssl.CERT_REQUIRED if required else ssl.CERT_OPTIONAL
    try:
        lib = _libssl()
        pointer = _ssl_ctx_pointer(ctx)
        # Probe: flip the mode through Python and read it back through OpenSSL, twice, so
        # a wrong pointer is caught before it is written through.
        for mode in (ssl.CERT_OPTIONAL, ssl.CERT_REQUIRED):
            ctx.verify_mode = mode
            if lib.SSL_CTX_get_verify_mode(pointer) != _OPENSSL_MODE[mode]:
                raise Unsupported("SSL_CTX verify mode does not match")
    except (OSError, AttributeError, ValueError) as exc:
        raise Unsupported(str(exc)) from None
    mode = ssl.CERT_REQUIRED if required else ssl.CERT_OPTIONAL
    ctx.verify_mode = mode
    lib.SSL_CTX_set_verify(pointer, _OPENSSL_MODE[mode], _accept)
