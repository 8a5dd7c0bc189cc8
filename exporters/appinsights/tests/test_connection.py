"""Connection strings (reference section 1.2), checked against opencensus's own parser."""

from __future__ import annotations

import pytest
from opencensus.ext.azure.common import parse_connection_string as oc_parse

from pipeobs.errors import ConfigError
from pipeobs_appinsights.connection import (
    CONNECTION_STRING_ENV,
    DEFAULT_INGESTION_ENDPOINT,
    INSTRUMENTATION_KEY_ENV,
    ConnectionInfo,
    parse_connection_string,
    resolve_connection,
)

KEY = "00000000-0000-0000-0000-000000000001"
OTHER = "11111111-2222-3333-4444-555555555555"


class TestParseConnectionString:
    @pytest.mark.parametrize(
        "text",
        [
            f"InstrumentationKey={KEY};IngestionEndpoint=https://westeurope-5.in.applicationinsights.azure.com/",
            f"instrumentationkey={KEY};INGESTIONENDPOINT=https://x.example/;LiveEndpoint=https://live.example/",
            f"InstrumentationKey={KEY};EndpointSuffix=applicationinsights.azure.cn",
            f"InstrumentationKey={KEY};EndpointSuffix=ai.contoso.com;Location=westus2",
            f"InstrumentationKey={KEY};Authorization=ikey;EndpointSuffix=ai.contoso.com",
        ],
    )
    def test_matches_opencensus(self, text: str) -> None:
        """Keys, endpoint (explicit or built from EndpointSuffix/Location) agree with opencensus-ext-azure."""
        ours = parse_connection_string(text)
        theirs = oc_parse(text)

        assert ours["instrumentationkey"] == theirs["instrumentationkey"]
        assert ours["ingestionendpoint"] == theirs["ingestionendpoint"].rstrip("/")

    def test_location_prefixes_the_suffix(self) -> None:
        """EndpointSuffix with Location gives https://<Location>.dc.<EndpointSuffix>."""
        pairs = parse_connection_string(f"InstrumentationKey={KEY};EndpointSuffix=ai.contoso.com;Location=westus2")

        assert pairs["ingestionendpoint"] == "https://westus2.dc.ai.contoso.com"

    def test_default_endpoint(self) -> None:
        """Neither IngestionEndpoint nor EndpointSuffix: the global endpoint."""
        assert parse_connection_string(f"InstrumentationKey={KEY}")["ingestionendpoint"] == DEFAULT_INGESTION_ENDPOINT

    def test_tolerates_a_trailing_semicolon_unlike_opencensus(self) -> None:
        """A trailing ';' (opencensus raises) is ignored, as the .NET SDK does."""
        with pytest.raises(ValueError):
            oc_parse(f"InstrumentationKey={KEY};")

        assert parse_connection_string(f"InstrumentationKey={KEY};")["instrumentationkey"] == KEY

    def test_value_may_contain_equals(self) -> None:
        """Only the first '=' separates key and value (an endpoint may carry a query)."""
        pairs = parse_connection_string(f"InstrumentationKey={KEY};IngestionEndpoint=https://x.example/?a=b")

        assert pairs["ingestionendpoint"] == "https://x.example/?a=b"

    @pytest.mark.parametrize(
        ("text", "words"),
        [
            (f"InstrumentationKey={KEY};garbage", "is not Key=Value"),
            (f"InstrumentationKey={KEY};Authorization=basic", "Authorization=ikey"),
            (f"InstrumentationKey={KEY};IngestionEndpoint=ftp://x", "https:// URL"),
            (f"InstrumentationKey={KEY};IngestionEndpoint=nohost", "https:// URL"),
        ],
    )
    def test_invalid_strings_name_the_fix(self, text: str, words: str) -> None:
        """Each malformed string is a one-line ConfigError saying what to do."""
        with pytest.raises(ConfigError) as caught:
            parse_connection_string(text)

        assert words in str(caught.value)
        assert "\n" not in str(caught.value)


class TestResolveConnection:
    def test_argument_gives_key_and_track_url(self) -> None:
        """The argument's key and endpoint; envelopes go to <endpoint>/v2.1/track."""
        info = resolve_connection(f"InstrumentationKey={KEY};IngestionEndpoint=https://x.example/", environ={})

        assert info == ConnectionInfo(KEY, "https://x.example", "ikey")
        assert info.track_url == "https://x.example/v2.1/track"

    def test_environment_variable(self) -> None:
        """Without an argument, APPLICATIONINSIGHTS_CONNECTION_STRING is read."""
        env = {CONNECTION_STRING_ENV: f"InstrumentationKey={KEY};IngestionEndpoint=https://env.example"}

        info = resolve_connection(environ=env)

        assert (info.instrumentation_key, info.ingestion_endpoint) == (KEY, "https://env.example")

    def test_argument_beats_environment(self) -> None:
        """The argument's key wins over the environment's."""
        env = {CONNECTION_STRING_ENV: f"InstrumentationKey={OTHER}"}

        assert resolve_connection(f"InstrumentationKey={KEY}", environ=env).instrumentation_key == KEY

    def test_endpoint_falls_back_to_environment_like_opencensus(self) -> None:
        """A key-only argument takes the environment's endpoint (opencensus's priority)."""
        env = {CONNECTION_STRING_ENV: f"InstrumentationKey={OTHER};IngestionEndpoint=https://env.example"}

        info = resolve_connection(f"InstrumentationKey={KEY}", environ=env)

        assert (info.instrumentation_key, info.ingestion_endpoint) == (KEY, "https://env.example")

    def test_legacy_instrumentation_key_argument_warns(self) -> None:
        """instrumentation_key= still works, with a DeprecationWarning, and beats the environment."""
        env = {CONNECTION_STRING_ENV: f"InstrumentationKey={OTHER}"}

        with pytest.warns(DeprecationWarning, match="connection string"):
            info = resolve_connection(instrumentation_key=KEY, environ=env)

        assert (info.instrumentation_key, info.ingestion_endpoint) == (KEY, DEFAULT_INGESTION_ENDPOINT)

    def test_legacy_environment_key_is_last(self) -> None:
        """APPINSIGHTS_INSTRUMENTATIONKEY is used only when nothing else gives a key."""
        env = {INSTRUMENTATION_KEY_ENV: KEY}

        with pytest.warns(DeprecationWarning):
            assert resolve_connection(environ=env).instrumentation_key == KEY
        assert (
            resolve_connection(
                environ={**env, CONNECTION_STRING_ENV: f"InstrumentationKey={OTHER}"}
            ).instrumentation_key
            == OTHER
        )

    def test_missing_names_the_variable(self) -> None:
        """No key anywhere: ConfigError naming APPLICATIONINSIGHTS_CONNECTION_STRING."""
        with pytest.raises(ConfigError, match=CONNECTION_STRING_ENV):
            resolve_connection(environ={})

    def test_key_must_be_a_guid(self) -> None:
        """A key that is not a GUID is refused before anything is sent."""
        with pytest.raises(ConfigError, match="must be a GUID"):
            resolve_connection("InstrumentationKey=not-a-key", environ={})

    def test_authorization_aad_is_kept(self) -> None:
        """Authorization=AAD is accepted and reported (the exporter then requires a credential)."""
        assert resolve_connection(f"InstrumentationKey={KEY};Authorization=AAD", environ={}).authorization == "aad"


@pytest.mark.parametrize("text", [
    "InstrumentationKey=sk-live-0123456789abcdefSECRET",
    "sk-live-0123456789abcdefSECRET",  # a secret pasted as the whole connection string
])
def test_a_key_that_is_not_a_guid_is_never_echoed_in_full(text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        resolve_connection(text, environ={})
    message = str(caught.value)
    assert "0123456789abcdefSECRET" not in message and "SECRET" not in message, message
    assert "'sk-live-'..." in message
