"""The Kafka security settings, as every client of the fleet gets them."""

from __future__ import annotations

import ssl
from pathlib import Path

import pydantic
import pytest

from costtrace.cli.main import unavailable
from costtrace.fleet.app import broker_credentials
from costtrace.fleet.settings import Settings, kafka_client_options


def test_plaintext_by_default() -> None:
    assert kafka_client_options(Settings()) == {"security_protocol": "PLAINTEXT"}
    assert broker_credentials(Settings()) is None


def test_sasl_over_tls_gives_every_client_the_mechanism_the_user_and_a_verifying_context() -> None:
    settings = Settings(
        kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="SCRAM-SHA-256",
        kafka_sasl_username="costtrace", kafka_sasl_password=pydantic.SecretStr("s3cret"),
    )  # fmt: skip
    options = kafka_client_options(settings)
    context = options.pop("ssl_context")
    assert options == {
        "security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-256",
        "sasl_plain_username": "costtrace", "sasl_plain_password": "s3cret",
    }  # fmt: skip
    assert isinstance(context, ssl.SSLContext) and context.check_hostname
    assert context.verify_mode is ssl.CERT_REQUIRED
    faust_side = broker_credentials(settings)
    assert (faust_side.protocol.value, faust_side.mechanism.value) == ("SASL_SSL", "SCRAM-SHA-256")
    assert "s3cret" not in repr(faust_side) and "s3cret" not in repr(settings)


def test_the_password_may_come_from_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("from-a-secret\n")
    settings = Settings(
        kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_mechanism="PLAIN",
        kafka_sasl_username="costtrace", kafka_sasl_password_file=secret,
    )  # fmt: skip
    assert kafka_client_options(settings)["sasl_plain_password"] == "from-a-secret"
    assert "ssl_context" not in kafka_client_options(settings)


@pytest.mark.parametrize(
    ("given", "says"),
    [
        ({"kafka_security_protocol": "SASL_SSL"}, "COSTTRACE_KAFKA_SASL_USERNAME is required with SASL_SSL"),
        (
            {"kafka_security_protocol": "SASL_PLAINTEXT", "kafka_sasl_username": "u"},
            "COSTTRACE_KAFKA_SASL_PASSWORD or COSTTRACE_KAFKA_SASL_PASSWORD_FILE is required",
        ),
        (
            {"kafka_ssl_certfile": "/c.pem"},
            "COSTTRACE_KAFKA_SSL_CERTFILE and COSTTRACE_KAFKA_SSL_KEYFILE go together",
        ),
    ],
)
def test_missing_credentials_are_named_in_one_line(given: dict[str, str], says: str) -> None:
    with pytest.raises(pydantic.ValidationError) as caught:
        Settings(**given)  # type: ignore[arg-type]
    line = unavailable(caught.value)
    assert line is not None and line.startswith(f"invalid setting: {says}") and "\n" not in line


def test_a_bad_secret_setting_is_named_but_not_shown() -> None:
    with pytest.raises(pydantic.ValidationError) as caught:
        Settings(kafka_sasl_password=123456789, partitions="many")  # type: ignore[arg-type]
    line = unavailable(caught.value)
    assert line is not None and "COSTTRACE_KAFKA_SASL_PASSWORD=***" in line and "123456789" not in line
    assert "COSTTRACE_PARTITIONS='many'" in line
