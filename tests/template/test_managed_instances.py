"""Lambda Managed Instances: the edit docs/deploy.md gives a deployer, and
why it is an edit and not a setting. The pinned SAM transform runs here
exactly as `sam deploy` runs it, on the template with the documented edit
applied."""

import copy
import json
import os
import pathlib
import re

import local_stack
import pytest
from cfnlint.decode import cfn_yaml
from samtranslator.model.exceptions import InvalidDocumentException
from samtranslator.translator.transform import transform

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEPLOY_DOC = ROOT / "docs" / "deploy.md"
BENCHMARKS = ROOT / "BENCHMARKS.md"
PROVIDER = "ManagedInstancesCapacityProvider"


def documented_edit():
    text = DEPLOY_DOC.read_text()
    block = re.search(r"<!-- managed-instances-edit -->\s*```yaml\n(.*?)```", text, re.S)
    assert block, "docs/deploy.md shows the edit after <!-- managed-instances-edit -->"
    return json.loads(json.dumps(cfn_yaml.loads(block.group(1))))


def template(path=local_stack.SQS_TEMPLATE):
    template = json.loads(json.dumps(cfn_yaml.load(str(path))))
    template["Globals"]["Function"]["CodeUri"] = "s3://code/bootstrap.zip"
    return template


def translate(template):
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    return transform(copy.deepcopy(template), {}, local_stack._NoManagedPolicies())["Resources"]


def edited(function):
    """The stack's template as docs/deploy.md's steps leave it, for
    `function` (the edit names the SQS stack's; the Kafka stack takes the
    same under its own)."""
    edited = template(local_stack.template_of(function))
    del edited["Globals"]["Function"]["VpcConfig"]
    edit = documented_edit()["Resources"]
    edit[function] = edit.pop("SqsHandlerFunction")
    for name, resource in edit.items():
        if name in edited["Resources"]:
            edited["Resources"][name]["Properties"].update(resource["Properties"])
        else:
            edited["Resources"][name] = resource
    return edited


@pytest.mark.parametrize("function", ["SqsHandlerFunction", "KafkaHandlerFunction"])
def test_the_documented_edit_puts_the_function_on_a_capacity_provider_in_the_vpc_settings(function):
    resources = translate(edited(function))
    provider = resources[PROVIDER]
    assert provider["Type"] == "AWS::Lambda::CapacityProvider"
    vpc = json.dumps(provider["Properties"]["VpcConfig"])
    assert " FunctionSubnetIds=" in vpc and " FunctionSecurityGroupId=" in vpc
    assert " Architecture=" in json.dumps(provider["Properties"]["InstanceRequirements"])
    properties = resources[function]["Properties"]
    config = properties["CapacityProviderConfig"]["LambdaManagedInstancesCapacityProviderConfig"]
    assert config["CapacityProviderArn"] == {"Fn::GetAtt": [PROVIDER, "Arn"]}
    assert config["PerExecutionEnvironmentMaxConcurrency"] > 1
    assert "VpcConfig" not in properties


def benchmarked_environment():
    """(memory in MB, most invocations at once) of the Managed Instances
    runs BENCHMARKS.md recorded, which docs/operations.md prices."""
    section = BENCHMARKS.read_text().split("### Lambda Managed Instances")[1].split("\n###")[0]
    memory = int(re.search(r"vCPUs \(a cgroup quota\) and (\d+) MB", section).group(1))
    at_once = max(
        int(row.split("|")[2])
        for row in section.splitlines()
        if re.match(r"\| [^|]+ \| \d+ \|", row)
    )
    return memory, at_once


def test_the_documented_deployment_is_the_one_benchmarked_and_its_settings_are_admitted():
    text = DEPLOY_DOC.read_text()
    section = text[text.index("## Lambda Managed Instances"):]
    settings = re.search(r'Settings="([^"]*)"', section).group(1)
    pattern = template()["Parameters"]["Settings"]["AllowedPattern"]
    assert re.fullmatch(pattern, settings), settings
    assert "FunctionSubnetIds=" in settings and "FunctionSecurityGroupId=" in settings
    memory = int(re.search(r"FunctionMemory=(\d+)", settings).group(1))
    assert memory >= 2048, "Managed Instances give each vCPU at least 2 GiB"
    config = documented_edit()["Resources"]["SqsHandlerFunction"]["Properties"]
    at_once = config["CapacityProviderConfig"]["PerExecutionEnvironmentMaxConcurrency"]
    assert (memory, at_once) == benchmarked_environment()


def test_the_pinned_sam_cannot_make_it_a_setting_yet():
    """Why the template has no ManagedInstances setting. When this fails, a
    SAM release takes the conditional form: make it a setting."""
    config = documented_edit()["Resources"]["SqsHandlerFunction"]["Properties"]
    conditional = template()
    del conditional["Globals"]["Function"]["VpcConfig"]
    conditional["Conditions"]["ManagedInstancesOn"] = {"Fn::Equals": ["a", "b"]}
    conditional["Resources"]["SqsHandlerFunction"]["Properties"]["CapacityProviderConfig"] = {
        "Fn::If": ["ManagedInstancesOn", config["CapacityProviderConfig"], {"Ref": "AWS::NoValue"}]
    }
    conditional["Resources"][PROVIDER] = documented_edit()["Resources"][PROVIDER]
    with pytest.raises(InvalidDocumentException) as refused:
        translate(conditional)
    assert "Invalid CapacityProviderConfig" in str(refused.value)
    beside_the_vpc = template()
    beside_the_vpc["Resources"]["SqsHandlerFunction"]["Properties"].update(config)
    beside_the_vpc["Resources"][PROVIDER] = documented_edit()["Resources"][PROVIDER]
    with pytest.raises(InvalidDocumentException) as refused:
        translate(beside_the_vpc)
    assert "'CapacityProviderConfig' and 'VpcConfig'" in str(refused.value)
