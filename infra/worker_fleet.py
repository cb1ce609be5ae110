"""The worker fleet: network, launch template (IMDSv2, encrypted root, no SSH) and the group.

It grants what it owns: its instances may read their runtime asset and take themselves out of
their group; the table and the log bucket grant the rest (``TaskTable.grant_worker``,
``LogBucket.grant_write_logs``)."""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import jsii
from aws_cdk import Annotations, ArnFormat, Duration, Fn, Stack
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3_assets as s3_assets
from constructs import Construct

from .nag import GROUP_ARN, GROUP_ARN_REASON, suppress
from .runtime_asset import ASSET_EXCLUDE, fleet_bundling

BOOTSTRAP = Path(__file__).with_name("bootstrap.sh")
DENY_IMDS = Path(__file__).with_name("deny-imds.sh")  # its function goes into the user-data
TASK_USER = "pyanamo-task"  # sub-tasks run as this user, away from the metadata service
PRICE_LOOKUP_ACTIONS = ("pricing:GetProducts", "ec2:DescribeSpotPriceHistory")  # the worker's price (pricing.py)


@dataclass(frozen=True, kw_only=True)
class FleetProps:
    """What the fleet is made of (from `cdk.json` context, via ``infra.settings``)."""

    instance_types: tuple[str, ...]
    arm64: bool
    spot: bool
    fleet_size: int
    volume_size: int  # GiB
    assign_public_ip: bool
    worker_args: tuple[str, ...]
    vpc_id: str | None = None
    subnet_ids: tuple[str, ...] = ()
    machine_image: str | None = None  # AMI ID or SSM parameter name; None: the latest AL2023
    setup: Path | None = None  # the user's set-up script, run as root before the worker starts
    setup_timeout: int = 3600
    ssm: bool = False  # Session Manager (AmazonSSMManagedInstanceCore) on the instances


@jsii.implements(ec2.IMachineImage)
class GivenImage:
    """An AMI by its ID in whatever region the stack is deployed to (``MachineImage.generic_linux``
    needs the region at synth time)."""

    def __init__(self, ami: str) -> None:
        self.ami = ami

    def get_image(self, scope: Construct) -> ec2.MachineImageConfig:
        return ec2.MachineImageConfig(image_id=self.ami, os_type=ec2.OperatingSystemType.LINUX,
                                      user_data=ec2.UserData.for_linux())


def machine_image(props: FleetProps) -> ec2.IMachineImage:
    if props.machine_image is None:
        cpu = ec2.AmazonLinuxCpuType.ARM_64 if props.arm64 else ec2.AmazonLinuxCpuType.X86_64
        return ec2.MachineImage.latest_amazon_linux2023(cpu_type=cpu)
    if props.machine_image.startswith("/"):
        return ec2.MachineImage.from_ssm_parameter(props.machine_image, os=ec2.OperatingSystemType.LINUX)
    return GivenImage(props.machine_image)


def render_user_data(environment: Mapping[str, str]) -> str:
    """The user-data: the settings as exported variables, the firewall function, then the
    bootstrap script."""
    body = BOOTSTRAP.read_text().split("\n", 1)[1]  # drop the shebang: ours comes first
    deny = DENY_IMDS.read_text().split("\n", 1)[1].split("\nif [ \"${BASH_SOURCE[0]}\"", 1)[0]
    exports = "\n".join(f"export {name}={_quote(value)}" for name, value in environment.items())
    return f"#!/bin/bash\n{exports}\n{deny}\n{body}"


def _quote(value: str) -> str:
    # CDK tokens (${Token[...]}) become plain names and ARNs at deploy time: quote as text.
    return shlex.quote(value) if "${Token[" not in value else f"'{value}'"


class WorkerFleet(Construct):
    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        props: FleetProps,
        runtime_path: Path,
        table_name: str,
        log_bucket: str,
        outputs: str,
    ) -> None:
        super().__init__(scope, id)
        self.vpc, subnets = self._network(props)
        self.runtime = s3_assets.Asset(self, "Runtime", path=str(runtime_path), exclude=ASSET_EXCLUDE,
                                       **fleet_bundling(runtime_path))
        self.role = iam.Role(
            self,
            "Role",
            assumed_by=iam.ServicePrincipal("ec2.amazonaws.com"),
            description="PyAnamo worker instances",
            managed_policies=(
                [iam.ManagedPolicy.from_aws_managed_policy_name("AmazonSSMManagedInstanceCore")] if props.ssm else None
            ),
        )
        self.security_group = ec2.SecurityGroup(
            self, "SecurityGroup", vpc=self.vpc, allow_all_outbound=True,
            description="PyAnamo workers: no inbound access (use SSM Session Manager)",
        )
        # The user's code holds none of the instance role: it runs as TASK_USER, whom the bootstrap's
        # firewall keeps from the metadata service, with the job role's credentials (granted by
        # whoever owns what it may read: the input buckets).
        self.job_role = iam.Role(
            self, "JobRole", assumed_by=iam.ArnPrincipal(self.role.role_arn),
            description="PyAnamo sub-tasks: what the user's commands may do (read the input buckets)",
            max_session_duration=Duration.hours(12),
        )
        self.job_role.grant_assume_role(self.role)
        worker_args = [*props.worker_args, "--log-bucket", log_bucket, "--outputs", outputs,
                       "--run-as", TASK_USER, "--job-role", self.job_role.role_arn]
        environment = {
            "AWS_REGION": Stack.of(self).region,
            "PYANAMO_TABLE": table_name,
            "PYANAMO_ASSET": self.runtime.s3_object_url,
            "PYANAMO_WORKER_ARGS": " ".join(worker_args),
            "PYANAMO_LOG_BUCKET": log_bucket,
        }
        self.setup = None
        if props.setup is not None:
            self.setup = s3_assets.Asset(self, "Setup", path=str(props.setup))
            environment["PYANAMO_SETUP"] = self.setup.s3_object_url
            environment["PYANAMO_SETUP_TIMEOUT"] = str(props.setup_timeout)
        self.user_data = ec2.UserData.custom(render_user_data(environment))
        self.launch_template = ec2.LaunchTemplate(
            self,
            "LaunchTemplate",
            machine_image=machine_image(props),
            user_data=self.user_data,
            role=self.role,
            security_group=self.security_group,
            require_imdsv2=True,
            http_put_response_hop_limit=1,
            associate_public_ip_address=props.assign_public_ip or None,
            block_devices=[
                ec2.BlockDevice(
                    device_name="/dev/xvda",
                    volume=ec2.BlockDeviceVolume.ebs(
                        props.volume_size, encrypted=True, volume_type=ec2.EbsDeviceVolumeType.GP3,
                        delete_on_termination=True,
                    ),
                )
            ],
        )
        spot = props.spot
        self.group = autoscaling.AutoScalingGroup(
            self,
            "Group",
            vpc=self.vpc,
            vpc_subnets=subnets,
            min_capacity=0,
            max_capacity=props.fleet_size,
            # No desired capacity: a redeploy must never resize a running fleet (the scaler and
            # `pyanamo fleet scale` own it). Instances are protected from scale-in: none is ended
            # by Auto Scaling while it works; each leaves by itself when its worker ends.
            new_instances_protected_from_scale_in=True,
            capacity_rebalance=spot,
            mixed_instances_policy=autoscaling.MixedInstancesPolicy(
                launch_template=self.launch_template,
                launch_template_overrides=[
                    autoscaling.LaunchTemplateOverrides(instance_type=ec2.InstanceType(t))
                    for t in props.instance_types
                ],
                instances_distribution=autoscaling.InstancesDistribution(
                    on_demand_base_capacity=0,
                    on_demand_percentage_above_base_capacity=0 if spot else 100,
                    spot_allocation_strategy=(
                        autoscaling.SpotAllocationStrategy.CAPACITY_OPTIMIZED if spot else None
                    ),
                ),
            ),
        )

        self._grant_own()
        self._justify(new_vpc=props.vpc_id is None, ssm=props.ssm)

    def _grant_own(self) -> None:
        assets = [self.runtime] + ([self.setup] if self.setup is not None else [])
        self.role.add_to_principal_policy(iam.PolicyStatement(
            actions=["s3:GetObject"], resources=[a.bucket.arn_for_objects(a.s3_object_key) for a in assets]))
        # Its own policy: the launch template waits for the role's default policy, and this one
        # names the group, which waits for the launch template.
        leave = iam.Policy(self, "LeaveGroup", roles=[self.role], statements=[iam.PolicyStatement(
            actions=["autoscaling:TerminateInstanceInAutoScalingGroup"], resources=[self.group_arn()])])
        suppress(leave, "AwsSolutions-IAM5", GROUP_ARN_REASON, [GROUP_ARN])
        # The worker's price per hour, looked up once at start (pyanamo.pricing): the Price List
        # API and the Spot price history are read-only and have no resources to name.
        prices = iam.Policy(self, "LookUpPrices", roles=[self.role], statements=[iam.PolicyStatement(
            actions=list(PRICE_LOOKUP_ACTIONS), resources=["*"])])
        suppress(prices, "AwsSolutions-IAM5",
                 "pricing:GetProducts and ec2:DescribeSpotPriceHistory support no resource-level permissions "
                 "(their resource is always *); both only read public prices.", ["Resource::*"])

    def _justify(self, new_vpc: bool, ssm: bool) -> None:
        """cdk-nag findings that are by design, each with its reason."""
        if ssm:
            suppress(self.role, "AwsSolutions-IAM4",
                     "AmazonSSMManagedInstanceCore (asked for with -c ssm=true) is AWS's documented policy for "
                     "Session Manager, the only way onto the instances (no SSH, no inbound rule).",
                     ["Policy::arn:<AWS::Partition>:iam::aws:policy/AmazonSSMManagedInstanceCore"])
        suppress(self.group, "AwsSolutions-AS3",
                 "Instances leave the group by design whenever the queue is drained; `pyanamo fleet status` "
                 "and `pyanamo status` are how a run is watched, not scaling notifications.")
        suppress(self.group, "CdkNagValidationFailure",
                 "EC26 cannot follow the mixed-instances policy to the launch template; its root volume is "
                 "encrypted (tests/infra asserts Encrypted on the launch template).",
                 ["AwsSolutions-EC26"])
        if new_vpc:
            suppress(self.vpc, "AwsSolutions-VPC7",
                     "Workers accept no inbound traffic; flow logs cost per GB of batch-job traffic and are "
                     "left to the user (or bring your own VPC with -c vpc_id).")

    def group_arn(self) -> str:
        """The group's ARN; its middle part is a UUID AWS assigns, hence the one wildcard."""
        return Stack.of(self).format_arn(
            service="autoscaling",
            resource="autoScalingGroup",
            resource_name=f"*:autoScalingGroupName/{self.group.auto_scaling_group_name}",
            arn_format=ArnFormat.COLON_RESOURCE_NAME,
        )

    def _network(self, props: FleetProps) -> tuple[ec2.IVpc, ec2.SubnetSelection]:
        if props.vpc_id and props.subnet_ids:
            vpc = ec2.Vpc.from_vpc_attributes(
                self, "Vpc", vpc_id=props.vpc_id, availability_zones=Fn.get_azs()
            )
            Annotations.of(vpc).acknowledge_warning(
                "@aws-cdk/aws-ec2:vpcAttributeIsListTokenavailabilityZones",
                "the group gets its subnets explicitly; nothing asks this VPC for its subnets or zones",
            )
            subnets = [ec2.Subnet.from_subnet_id(self, f"Subnet{n}", s) for n, s in enumerate(props.subnet_ids)]
            for subnet in subnets:
                Annotations.of(subnet).acknowledge_warning(
                    "@aws-cdk/aws-ec2:noSubnetRouteTableId", "nothing here reads the subnets' route tables"
                )
            return vpc, ec2.SubnetSelection(subnets=subnets)
        if props.vpc_id:
            vpc = ec2.Vpc.from_lookup(self, "Vpc", vpc_id=props.vpc_id)
            kind = ec2.SubnetType.PUBLIC if props.assign_public_ip else ec2.SubnetType.PRIVATE_WITH_EGRESS
            return vpc, ec2.SubnetSelection(subnet_type=kind)
        vpc = ec2.Vpc(
            self,
            "Vpc",
            max_azs=3,
            nat_gateways=0,
            restrict_default_security_group=False,
            subnet_configuration=[
                ec2.SubnetConfiguration(name="public", subnet_type=ec2.SubnetType.PUBLIC, cidr_mask=20)
            ],
        )
        return vpc, ec2.SubnetSelection(subnet_type=ec2.SubnetType.PUBLIC)
