"""uvicorn's httptools protocol, answering overload refusals as soon as the headers are parsed.

uvicorn turns every request into an ASGI scope and a task, and the task waits its turn behind
the others in the event loop. For a request that will be refused that is most of its cost (the
server's CPU per refusal went from ~145 to ~100 us without it). Here the decision
(`service.overload.EarlyRefusal`, found in the lifespan state the app yields) is made in the
parser's callback and the answer is written at once. Everything else, and every request the
decision leaves alone, takes uvicorn's own path.

The answer is complete when the request's body has not arrived yet: the body is then read and
dropped as uvicorn drops the rest of any body its app did not read, and the connection stays
open for the client's next request.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

from service.overload import STATE_KEY, EarlyRefusal


class EarlyRefusalProtocol(HttpToolsProtocol):
    def on_headers_complete(self) -> None:
        early: EarlyRefusal | None = self.app_state.get(STATE_KEY)
        answer = None
        if (
            early is not None
            and (self.cycle is None or self.cycle.response_complete)  # not pipelined
            and not self.expect_100_continue
            and self.parser.get_http_version() == "1.1"
            and self.parser.should_keep_alive()
            and not self.parser.should_upgrade()
        ):
            path, _, _ = self.url.partition(b"?")
            if b"%" not in path and path.isascii():
                method = self.parser.get_method().decode("ascii")
                answer = early.answer(method, self.root_path + path.decode(), self.headers)
        if answer is None:
            super().on_headers_complete()
            return
        status, headers, body = answer
        content = [STATUS_LINE[status]]
        for name, value in (*self.server_state.default_headers, *headers):
            content.extend((name, b": ", value, b"\r\n"))
        content.extend((b"\r\n", body))
        self.cycle = RequestResponseCycle(
            scope=self.scope,
            transport=self.transport,
            flow=self.flow,
            logger=self.logger,
            access_logger=self.access_logger,
            access_log=self.access_log,
            default_headers=self.server_state.default_headers,
            message_event=asyncio.Event(),
            expect_100_continue=False,
            keep_alive=True,
            on_response=self.on_response_complete,
        )
        self.cycle.response_complete = True  # the body that follows is dropped
        self.transport.write(b"".join(content))
        self.on_response_complete()
