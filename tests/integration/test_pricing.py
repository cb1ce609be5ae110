"""A worker's price per hour: Spot from DescribeSpotPriceHistory (moto's server), on-demand from
the Price List API (a stub server speaking its JSON protocol: moto has no Price List), the
override, and a failed lookup that warns and leaves the price unknown."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pyanamo.aws import Endpoint, aws_client
from pyanamo.identity import Imds
from pyanamo.pricing import on_demand_price, worker_placement

from helpers import StubImds

pytestmark = pytest.mark.moto_only  # EC2's Spot price history is served by moto whatever the engine

ON_DEMAND = {
    "product": {"attributes": {"instanceType": "m7i.large", "regionCode": "eu-west-1"}},
    "terms": {"OnDemand": {"X.JRTCKXETXF": {"priceDimensions": {"X.JRTCKXETXF.6YS6EN2CT7": {
        "unit": "Hrs", "pricePerUnit": {"USD": "0.1058000000"}}}}}},
}


class PriceListStub:
    """GetProducts answers with ON_DEMAND when every filter matches m7i.large in eu-west-1."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.requests.append({"target": self.headers.get("X-Amz-Target"), **body})
                filters = {f["Field"]: f["Value"] for f in body.get("Filters", [])}
                match = filters.get("instanceType") == "m7i.large" and filters.get("regionCode") == "eu-west-1"
                data = json.dumps({"FormatVersion": "aws_v1", "PriceList": [json.dumps(ON_DEMAND)] if match else []})
                self.send_response(200)
                self.send_header("Content-Type", "application/x-amz-json-1.1")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data.encode())

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> PriceListStub:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(autouse=True)
def metadata_service(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests talk to a stub metadata service (the suite disables the real one)."""
    monkeypatch.delenv("AWS_EC2_METADATA_DISABLED", raising=False)


def clients(aws_env: dict[str, str], pricing_url: str | None = None):
    def client(service: str, region: str):
        url = pricing_url if service == "pricing" else aws_env["AWS_ENDPOINT_URL"]
        return aws_client(service, Endpoint(url, region))
    return client


def test_on_demand_price_comes_from_the_price_list_api(aws_env):
    with PriceListStub() as stub:
        pricing = aws_client("pricing", Endpoint(stub.url, "us-east-1"))
        assert on_demand_price(pricing, "m7i.large", "eu-west-1") == pytest.approx(0.1058)
        with pytest.raises(LookupError, match="no on-demand price for x9.huge in eu-west-1"):
            on_demand_price(pricing, "x9.huge", "eu-west-1")
    request = stub.requests[0]
    assert request["target"] == "AWSPriceListService.GetProducts" and request["ServiceCode"] == "AmazonEC2"
    assert {f["Field"]: f["Value"] for f in request["Filters"]} == {
        "instanceType": "m7i.large", "regionCode": "eu-west-1", "operatingSystem": "Linux", "tenancy": "Shared",
        "preInstalledSw": "NA", "capacitystatus": "Used"}


def test_an_on_demand_instance_is_priced_from_the_price_list(aws_env):
    metadata = {"instance-type": "m7i.large", "instance-life-cycle": "on-demand",
                "placement/availability-zone": "eu-west-1b"}
    warnings: list[str] = []
    with StubImds("i-0ondemand", metadata) as imds, PriceListStub() as stub:
        placement = worker_placement(Imds(imds.url), "i-0ondemand", "i-0ondemand", None, "eu-west-1",
                                     clients(aws_env, stub.url), warnings.append)
    assert (placement.instance_type, placement.lifecycle, placement.zone) == ("m7i.large", "on-demand", "eu-west-1b")
    assert placement.price_per_hour == pytest.approx(0.1058) and placement.price_source == "pricing-api"
    assert warnings == []


def test_a_spot_instance_is_priced_from_the_spot_price_history(aws_env):
    metadata = {"instance-type": "m7i.large", "instance-life-cycle": "spot",
                "placement/availability-zone": "us-east-1a"}
    with StubImds("i-0spot", metadata) as imds:
        placement = worker_placement(Imds(imds.url), "i-0spot", "i-0spot", None, "us-east-1", clients(aws_env),
                                     lambda line: pytest.fail(line))
    expected = aws_client("ec2", Endpoint(aws_env["AWS_ENDPOINT_URL"], "us-east-1")).describe_spot_price_history(
        InstanceTypes=["m7i.large"], AvailabilityZone="us-east-1a")["SpotPriceHistory"]
    price = next(float(h["SpotPrice"]) for h in expected if h["AvailabilityZone"] == "us-east-1a")
    assert placement.lifecycle == "spot" and placement.price_source == "spot-price-history"
    assert placement.price_per_hour == pytest.approx(price)


def test_a_failed_lookup_warns_and_leaves_the_price_unknown_and_the_override_wins(aws_env):
    metadata = {"instance-type": "m7i.large", "instance-life-cycle": "on-demand",
                "placement/availability-zone": "eu-west-1b"}
    warnings: list[str] = []
    with StubImds("i-0x", metadata) as imds:
        unreachable = clients(aws_env, "http://127.0.0.1:9")
        placement = worker_placement(Imds(imds.url), "i-0x", "i-0x", None, "eu-west-1", unreachable, warnings.append)
        assert placement.price_per_hour is None and placement.price_source == "none"
        assert len(warnings) == 1 and warnings[0].startswith("price of m7i.large (on-demand) unknown: ")
        given = worker_placement(Imds(imds.url), "i-0x", "i-0x", 0.2, "eu-west-1", unreachable, warnings.append)
    assert given.price_per_hour == 0.2 and given.price_source == "--price-per-hour" and len(warnings) == 1
