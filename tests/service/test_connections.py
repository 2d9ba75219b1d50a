"""The connection limit's fit to the open-file limit. (The limit itself, on a real server:
tests/service/test_http_protocol.py.)"""

from __future__ import annotations

import resource

from service.connections import RESERVED_FILES, fit_to_open_files


def test_the_open_file_limit_is_raised_and_the_connections_fitted_to_it() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))
    try:
        fitted = fit_to_open_files(10**9, 2)
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == hard
        if hard != resource.RLIM_INFINITY:
            assert fitted == (hard - RESERVED_FILES) // 2
        assert fit_to_open_files(100, 2) == 100
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
