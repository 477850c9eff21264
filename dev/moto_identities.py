"""Creates IAM users in a moto server, each with one inline policy and an
access key, then switches IAM enforcement on: from then on moto checks every
call against its caller's policies. For tests that need an identity denied
something specific (one object, say) rather than a whole stack's roles.

Usage: moto_identities.py URL, with {"user": policy document, ...} as JSON on
standard input; prints {"user": {"AccessKeyId": ..., "SecretAccessKey": ...}}.
"""

import json
import sys

import boto3

from local_stack import enforce_iam


def main():
    url = sys.argv[1]
    policies = json.load(sys.stdin)
    iam = boto3.client(
        "iam",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    keys = {}
    for user, document in policies.items():
        iam.create_user(UserName=user)
        iam.put_user_policy(UserName=user, PolicyName=user, PolicyDocument=json.dumps(document))
        key = iam.create_access_key(UserName=user)["AccessKey"]
        keys[user] = {"AccessKeyId": key["AccessKeyId"], "SecretAccessKey": key["SecretAccessKey"]}
    enforce_iam(url)
    json.dump(keys, sys.stdout)


if __name__ == "__main__":
    main()
