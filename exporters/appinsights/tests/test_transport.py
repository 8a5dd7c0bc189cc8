"""The default sender (http.client): one POST within one deadline, proxies as opencensus and requests take them."""

from __future__ import annotations

import base64
import json

import pytest
from appinsights_helpers import Ingestion, serve

from pipeobs.errors import ConfigError
from pipeobs_appinsights.transport import HttpSender, parse_proxies

TARGET = "http://ingest.example.invalid/v2.1/track"


class TestHttpSender:
    def test_post_and_answer(self, ingestion: Ingestion) -> None:
        """The body and headers arrive; the answer's status, lower-cased headers and body come back."""
        send = HttpSender()

        status, headers, body = send(
            f"{ingestion.endpoint}/v2.1/track", b"[]", {"Content-Type": "application/json"}, 5.0
        )

        assert status == 200
        assert headers["content-type"] == "application/json"
        assert json.loads(body) == {"itemsReceived": 0, "itemsAccepted": 0, "errors": []}

    def test_explicit_proxy_gets_the_absolute_url(self) -> None:
        """proxies='{"http": ...}' (opencensus's JSON string): the proxy receives the absolute URL and Basic auth."""
        with serve(Ingestion()) as proxy:
            send = HttpSender(json.dumps({"http": f"http://user:p%40ss@127.0.0.1:{proxy.port}"}))

            status, _headers, _body = send(TARGET, b"[]", {"Content-Type": "application/json"}, 5.0)

        assert status == 200
        post = proxy.posts[0]
        assert post["path"] == TARGET
        assert post["headers"]["proxy-authorization"] == "Basic " + base64.b64encode(b"user:p@ss").decode()

    def test_environment_proxy_and_no_proxy(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without proxies=, HTTP_PROXY is used, and NO_PROXY hosts go direct."""
        with serve(Ingestion()) as proxy:
            monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
            monkeypatch.setenv("NO_PROXY", "127.0.0.1")
            send = HttpSender()

            via_proxy = send(TARGET, b"[]", {"Content-Type": "application/json"}, 5.0)
            direct = send(f"{proxy.endpoint}/v2.1/track", b"[]", {"Content-Type": "application/json"}, 5.0)

        assert via_proxy[0] == direct[0] == 200
        assert [post["path"] for post in proxy.posts] == [TARGET, "/v2.1/track"]

    @pytest.mark.parametrize("proxies", ["not json", '["http://p"]', '{"http": 8080}'])
    def test_bad_proxies(self, proxies: str) -> None:
        """A proxies option that is not a JSON object of URLs is a ConfigError."""
        with pytest.raises(ConfigError, match="proxies"):
            parse_proxies(proxies)

    def test_empty_proxies_means_environment(self) -> None:
        """opencensus's default '{}' behaves like no option (the environment decides)."""
        assert parse_proxies("{}") is None and parse_proxies(None) is None
