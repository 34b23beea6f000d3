"""The reference EKS bearer token for fixed inputs, made with botocore the way
`aws eks get-token` makes it: a presigned STS GetCallerIdentity URL (GET,
valid 60 s) whose signature also covers an `x-k8s-aws-id: <cluster>` header,
encoded as `k8s-aws-v1.` + unpadded base64url of the URL.

The signing instant is fixed by --time (SigV4 format, YYYYMMDDTHHMMSSZ) so
that the output is a test vector. Only the credentials given on the command
line are used: no AWS configuration file, credentials file or AWS_*
environment variable of the machine is read. Prints the token and nothing else.
"""

import os

# Before botocore is imported or a session exists: nothing of the machine's
# AWS setup may leak in.
for _name in [n for n in os.environ if n.startswith("AWS_")]:
    del os.environ[_name]
os.environ["AWS_CONFIG_FILE"] = "/dev/null"
os.environ["AWS_SHARED_CREDENTIALS_FILE"] = "/dev/null"
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"

import argparse  # noqa: E402
import base64  # noqa: E402
import datetime  # noqa: E402
import sys  # noqa: E402
from urllib.parse import urlsplit  # noqa: E402

import botocore.auth  # noqa: E402
import botocore.session  # noqa: E402

TOKEN_PREFIX = "k8s-aws-v1."
CLUSTER_HEADER = "x-k8s-aws-id"
# The request-context key the cluster name travels in, from the parameter
# hook to the signing hook.
CONTEXT_KEY = "eks_reference_cluster"
URL_LIFETIME = 60


def freeze_signing_clock(instant):
    """botocore's SigV4 signers take their timestamp from
    botocore.auth.get_current_datetime (imported there from botocore.compat):
    naive UTC by default, aware when called with remove_tzinfo=False."""

    def fixed_now(remove_tzinfo=True):
        return instant.replace(tzinfo=None) if remove_tzinfo else instant

    botocore.auth.get_current_datetime = fixed_now


def take_cluster_name(params, context, **_):
    # ClusterName is no GetCallerIdentity parameter: move it out of the
    # parameters before botocore validates them.
    if "ClusterName" in params:
        context[CONTEXT_KEY] = params.pop("ClusterName")


def add_cluster_header(request, **_):
    cluster = request.context.get(CONTEXT_KEY)
    if cluster is not None:
        request.headers[CLUSTER_HEADER] = cluster


def presigned_url(args):
    session = botocore.session.get_session()
    # A session setting, not a Config option. botocore 1.44 already defaults
    # to regional; set it anyway, as the CLI relies on regional endpoints.
    session.set_config_variable("sts_regional_endpoints", "regional")
    client = session.create_client(
        "sts",
        region_name=args.region,
        endpoint_url=args.endpoint_url,
        aws_access_key_id=args.access_key,
        aws_secret_access_key=args.secret_key,
        aws_session_token=args.session_token,
    )
    events = client.meta.events
    events.register("provide-client-params.sts.GetCallerIdentity", take_cluster_name)
    events.register("before-sign.sts.GetCallerIdentity", add_cluster_header)
    url = client.generate_presigned_url(
        "get_caller_identity",
        Params={"ClusterName": args.cluster},
        ExpiresIn=URL_LIFETIME,
        HttpMethod="GET",
    )
    if args.endpoint_url is None:
        host = urlsplit(url).hostname
        expected = f"sts.{args.region}.amazonaws.com"
        if host != expected:
            sys.exit(f"botocore presigned for {host}, not the regional endpoint {expected}")
    return url


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--access-key", required=True)
    parser.add_argument("--secret-key", required=True)
    parser.add_argument("--session-token")
    parser.add_argument("--region", required=True)
    parser.add_argument("--cluster", required=True)
    parser.add_argument("--time", required=True, help="signing instant, UTC, YYYYMMDDTHHMMSSZ")
    parser.add_argument("--endpoint-url")
    args = parser.parse_args()

    try:
        instant = datetime.datetime.strptime(args.time, "%Y%m%dT%H%M%SZ")
    except ValueError:
        sys.exit(f"--time {args.time!r} is not YYYYMMDDTHHMMSSZ")
    freeze_signing_clock(instant.replace(tzinfo=datetime.timezone.utc))

    url = presigned_url(args)
    encoded = base64.urlsafe_b64encode(url.encode("utf-8")).decode("ascii").rstrip("=")
    print(TOKEN_PREFIX + encoded)


if __name__ == "__main__":
    main()
