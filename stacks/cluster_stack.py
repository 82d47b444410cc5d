"""ClusterStack: an HA RabbitMQ cluster on EC2, the AWS home of the seed's cluster.

A VPC over three AZs (or an existing one), one Auto Scaling group of nodes in private subnets of different
AZs that form a cluster through the AWS peer discovery plugin, an internal Network Load Balancer for AMQP
(5672) and the management API (15672), the Erlang cookie and the admin credentials generated in Secrets
Manager, and CloudWatch alarms on the node count and on RabbitMQ's memory and disk figures.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from aws_cdk import (
    Acknowledgment,
    ArnFormat,
    Aws,
    CfnOutput,
    Duration,
    Stack,
    Tags,
    Token,
    Validations,
)
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import aws_sns as sns
from cdk_nag import NagPackSuppression, NagSuppressions
from constructs import Construct

from stacks.cluster_monitoring import METRICS_NAMESPACE, cluster_alarms, cluster_dashboard
from stacks.cluster_settings import ClusterSettings
from stacks.network import subnets_by_id
from stacks.node_user_data import add_node_bootstrap
from stacks.topics import encrypted_topic

AMQP_PORT = 5672
MANAGEMENT_PORT = 15672
EPMD_PORT = 4369
DIST_PORT = 25672
CLI_PORTS = (35672, 35682)

DATA_DEVICE = "/dev/sdf"
LIFECYCLE_HOOK_NAME = "rabbitmq-leave-cluster"
LAUNCH_HOOK_NAME = "rabbitmq-join-cluster"
# Every AWS API the nodes (SSM agent, secrets, logs, metrics, peer discovery, cfn-signal) and the
# balancer's Lambdas (secrets, SSM Run Command, EC2, SNS, X-Ray, Step Functions) call.
INTERFACE_ENDPOINTS = {
    "Ssm": ec2.InterfaceVpcEndpointAwsService.SSM,
    "SsmMessages": ec2.InterfaceVpcEndpointAwsService.SSM_MESSAGES,
    "Ec2Messages": ec2.InterfaceVpcEndpointAwsService.EC2_MESSAGES,
    "Ec2": ec2.InterfaceVpcEndpointAwsService.EC2,
    "SecretsManager": ec2.InterfaceVpcEndpointAwsService.SECRETS_MANAGER,
    "Logs": ec2.InterfaceVpcEndpointAwsService.CLOUDWATCH_LOGS,
    "Monitoring": ec2.InterfaceVpcEndpointAwsService.CLOUDWATCH_MONITORING,
    "AutoScaling": ec2.InterfaceVpcEndpointAwsService.AUTOSCALING,
    "CloudFormation": ec2.InterfaceVpcEndpointAwsService.CLOUDFORMATION,
    "Sns": ec2.InterfaceVpcEndpointAwsService.SNS,
    "Sts": ec2.InterfaceVpcEndpointAwsService.STS,
    "Kms": ec2.InterfaceVpcEndpointAwsService.KMS,
    "XRay": ec2.InterfaceVpcEndpointAwsService.XRAY,
    "StepFunctions": ec2.InterfaceVpcEndpointAwsService.STEP_FUNCTIONS,
}


class ClusterStack(Stack):
    """An HA RabbitMQ cluster: nodes in an Auto Scaling group behind an internal NLB."""

    def __init__(
        self, scope: Construct, construct_id: str, *, settings: ClusterSettings, **kwargs: object
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)  # type: ignore[arg-type]
        self.settings = settings
        self.cluster_name = settings.cluster_name
        self.ssm_tag_key = settings.ssm_tag_key
        self.ssm_tag_value = settings.tag_value

        self.vpc, self.node_subnets = self._network()
        self.node_security_group, self.load_balancer_security_group, self.client_security_group = (
            self._security_groups()
        )
        self.cookie_secret, self.admin_secret, self.balancer_secret = self._secrets()
        self.node_log_group = logs.LogGroup(
            self,
            "NodeLogs",
            log_group_name=f"/rabbitmq/{self.cluster_name}",
            retention=logs.RetentionDays.THREE_MONTHS,
        )
        self.nodes = self._nodes()
        self.load_balancer, self.amqp_target_group, self.management_target_group = self._load_balancer()
        self.alarm_topic = self._alarms()

        self.node_subnet_ids: list[str] = list(settings.subnet_ids) or list(
            self.vpc.select_subnets(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS).subnet_ids
        )
        dns_name = self.load_balancer.load_balancer_dns_name
        self.amqp_endpoint = f"amqp://{dns_name}:{AMQP_PORT}"
        self.management_url = f"http://{dns_name}:{MANAGEMENT_PORT}"
        self._outputs()

    @property
    def availability_zones(self) -> list[str]:
        """The zones named by the context (checked against the region), else the account's, looked up.

        CDK looks the zones up at synth (cached in cdk.context.json): never assumed letters, which do not
        exist in every account and region.
        """
        if self.settings.availability_zones:
            if not Token.is_unresolved(self.region):
                self.settings.check_zones_in(self.region)
            return list(self.settings.availability_zones)
        return list(super().availability_zones)

    # --- network ----------------------------------------------------------------------------------------

    def _network(self) -> tuple[ec2.IVpc, ec2.SubnetSelection]:
        s = self.settings
        if s.vpc_id:
            vpc = ec2.Vpc.from_lookup(self, "Vpc", vpc_id=s.vpc_id)
            if s.subnet_ids:
                return vpc, subnets_by_id(self, s.subnet_ids)
            return vpc, ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS)

        flow_log_group = logs.LogGroup(self, "VpcFlowLogs", retention=logs.RetentionDays.ONE_MONTH)
        vpc = ec2.Vpc(
            self,
            "Vpc",
            ip_addresses=ec2.IpAddresses.cidr(s.vpc_cidr),
            availability_zones=list(s.availability_zones) or None,
            max_azs=None if s.availability_zones else 3,
            nat_gateways=s.nat_gateways,
            subnet_configuration=[
                ec2.SubnetConfiguration(name="public", subnet_type=ec2.SubnetType.PUBLIC, cidr_mask=24),
                ec2.SubnetConfiguration(
                    name="nodes", subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS, cidr_mask=20
                ),
            ],
            # Rejected flows only: the security signal without paying for every accepted packet.
            flow_logs={
                "Rejected": ec2.FlowLogOptions(
                    destination=ec2.FlowLogDestination.to_cloud_watch_logs(flow_log_group),
                    traffic_type=ec2.FlowLogTrafficType.REJECT,
                )
            },
        )
        Validations.of(vpc).acknowledge(
            Acknowledgment(
                id="CloudFormation-Validate::W3010",
                reason="The AZs come from the account's lookup or the context, checked against the region.",
            )
        )
        if s.vpc_endpoints:
            self._endpoints(vpc)
        return vpc, ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS)

    def _endpoints(self, vpc: ec2.Vpc) -> None:
        """Private endpoints for every AWS API the nodes and the balancer's Lambdas call (context
        vpcEndpoints): that traffic then stays off the NAT gateway."""
        vpc.add_gateway_endpoint("DynamoDbEndpoint", service=ec2.GatewayVpcEndpointAwsService.DYNAMODB)
        vpc.add_gateway_endpoint("S3Endpoint", service=ec2.GatewayVpcEndpointAwsService.S3)
        for name, service in INTERFACE_ENDPOINTS.items():
            vpc.add_interface_endpoint(f"{name}Endpoint", service=service, private_dns_enabled=True)

    def _security_groups(self) -> tuple[ec2.SecurityGroup, ec2.SecurityGroup, ec2.SecurityGroup]:
        nodes = ec2.SecurityGroup(
            self,
            "NodeSecurityGroup",
            vpc=self.vpc,
            description="RabbitMQ nodes: AMQP/management from the load balancer and clients, Erlang "
            "distribution only among the nodes",
            allow_all_outbound=True,
        )
        load_balancer = ec2.SecurityGroup(
            self,
            "LoadBalancerSecurityGroup",
            vpc=self.vpc,
            description="RabbitMQ internal NLB: AMQP from the VPC, management from cluster clients",
            allow_all_outbound=False,
        )
        clients = ec2.SecurityGroup(
            self,
            "ClientSecurityGroup",
            vpc=self.vpc,
            description="Clients trusted with the management API, such as the queue balancer Lambdas",
            allow_all_outbound=True,
        )
        for port, name in ((AMQP_PORT, "AMQP"), (MANAGEMENT_PORT, "management")):
            nodes.add_ingress_rule(load_balancer, ec2.Port.tcp(port), f"{name} from the load balancer")
            nodes.add_ingress_rule(clients, ec2.Port.tcp(port), f"{name} from cluster clients")
            load_balancer.add_egress_rule(nodes, ec2.Port.tcp(port), f"{name} to the nodes")
        # The CIDR as a literal when this stack makes the VPC, so cdk-nag can check the rule.
        cidr = self.vpc.vpc_cidr_block if self.settings.vpc_id else self.settings.vpc_cidr
        load_balancer.add_ingress_rule(ec2.Peer.ipv4(cidr), ec2.Port.tcp(AMQP_PORT), "AMQP from the VPC")
        load_balancer.add_ingress_rule(clients, ec2.Port.tcp(MANAGEMENT_PORT), "management from clients")
        nodes.add_ingress_rule(nodes, ec2.Port.tcp(EPMD_PORT), "epmd among the nodes")
        nodes.add_ingress_rule(nodes, ec2.Port.tcp(DIST_PORT), "Erlang distribution among the nodes")
        nodes.add_ingress_rule(nodes, ec2.Port.tcp_range(*CLI_PORTS), "CLI tools among the nodes")
        return nodes, load_balancer, clients

    # --- secrets ----------------------------------------------------------------------------------------

    def _user_secret(self, construct_id: str, username: str, who: str) -> secretsmanager.Secret:
        """A generated ``{username, password}`` for a RabbitMQ user the nodes create."""
        return secretsmanager.Secret(
            self,
            construct_id,
            description=f"{who} of {self.cluster_name}: {{username, password}}",
            generate_secret_string=secretsmanager.SecretStringGenerator(
                secret_string_template=json.dumps({"username": username}),
                generate_string_key="password",
                password_length=32,
                exclude_punctuation=True,
                include_space=False,
            ),
        )

    def _secrets(self) -> tuple[secretsmanager.Secret, secretsmanager.Secret, secretsmanager.Secret]:
        cookie = secretsmanager.Secret(
            self,
            "ErlangCookie",
            description=f"Erlang cookie shared by the RabbitMQ nodes of {self.cluster_name}",
            generate_secret_string=secretsmanager.SecretStringGenerator(
                password_length=48, exclude_punctuation=True, include_space=False
            ),
        )
        admin = self._user_secret("AdminCredentials", "admin", "RabbitMQ administrator")
        # The queue balancer's own user (monitoring + policymaker, no message access): see
        # ensure_balancer_user in node_bootstrap.sh.
        balancer = self._user_secret(
            "BalancerCredentials", "queue-balancer", "RabbitMQ user of the queue balancer"
        )
        reason = (
            "Rotating the Erlang cookie needs a restart of every node at once, and rotating a RabbitMQ "
            "password needs a rotation function that also changes it inside RabbitMQ; both are "
            "operator-driven (docs/deploy.md). The secrets carry no resource policy: the stacks grant "
            "secretsmanager:GetSecretValue to the nodes' role and the balancer's function role only, but any "
            "principal of this account whose own IAM policy allows it can read them too."
        )
        for secret in (cookie, admin, balancer):
            NagSuppressions.add_resource_suppressions(
                secret, [NagPackSuppression(id="AwsSolutions-SMG4", reason=reason)]
            )
        return cookie, admin, balancer

    # --- nodes ------------------------------------------------------------------------------------------

    def _node_role(self) -> iam.Role:
        role = iam.Role(
            self,
            "NodeRole",
            assumed_by=iam.ServicePrincipal("ec2.amazonaws.com"),
            description=f"RabbitMQ nodes of {self.cluster_name}: peer discovery, secrets, SSM, metrics",
            managed_policies=[iam.ManagedPolicy.from_aws_managed_policy_name("AmazonSSMManagedInstanceCore")],
        )
        role.add_to_policy(
            iam.PolicyStatement(
                sid="PeerDiscovery",
                # The peer discovery plugin, and rabbitmq-node's list of the group's instances.
                actions=[
                    "autoscaling:DescribeAutoScalingInstances",
                    "autoscaling:DescribeAutoScalingGroups",
                    "ec2:DescribeInstances",
                ],
                resources=["*"],
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(
                sid="LifecycleActions",
                # A node completes (and heartbeats) its own launch and termination actions. Scoped by the
                # group's tag: naming the group's ARN here would make the group wait for this policy.
                actions=["autoscaling:CompleteLifecycleAction", "autoscaling:RecordLifecycleActionHeartbeat"],
                resources=[
                    self.format_arn(
                        service="autoscaling",
                        resource="autoScalingGroup",
                        resource_name="*",
                        arn_format=ArnFormat.COLON_RESOURCE_NAME,
                    )
                ],
                conditions={
                    "StringEquals": {f"autoscaling:ResourceTag/{self.ssm_tag_key}": self.ssm_tag_value}
                },
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(
                sid="ShipLogs",
                actions=["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"],
                resources=[self.node_log_group.log_group_arn],
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(
                sid="NodeMetrics",
                actions=["cloudwatch:PutMetricData"],
                resources=["*"],
                conditions={"StringEquals": {"cloudwatch:namespace": METRICS_NAMESPACE}},
            )
        )
        for secret in (self.cookie_secret, self.admin_secret, self.balancer_secret):
            secret.grant_read(role)
        NagSuppressions.add_resource_suppressions(
            role,
            [
                NagPackSuppression(
                    id="AwsSolutions-IAM4",
                    reason="AmazonSSMManagedInstanceCore is the AWS-maintained minimum for Session Manager "
                    "and Run Command, which replace SSH keys and carry the balancer's rabbitmqctl calls.",
                    applies_to=["Policy::arn:<AWS::Partition>:iam::aws:policy/AmazonSSMManagedInstanceCore"],
                ),
                NagPackSuppression(
                    id="AwsSolutions-IAM5",
                    reason="autoscaling:Describe*, ec2:DescribeInstances (peer discovery and the group's "
                    "node list) and cloudwatch:PutMetricData (limited to the RabbitMQ namespace by a "
                    "condition) support no resource-level permissions; the lifecycle actions name every "
                    "group but only the one tagged with this cluster's tag (a condition), because naming the "
                    "group itself would make it wait for its own nodes' policy.",
                    applies_to=[
                        "Resource::*",
                        {"regex": "/^Resource::arn:<AWS::Partition>:autoscaling:.*:autoScalingGroup:\\*$/"},
                    ],
                ),
            ],
            apply_to_children=True,
        )
        return role

    def _machine_image(self) -> ec2.IMachineImage:
        # Pinned: the latest Amazon Linux 2023 is looked up once and kept in cdk.context.json, so a deploy
        # never rolls the nodes by surprise. Rolling to a newer image is a deliberate step (docs/deploy.md,
        # "Roll the AMI"): `cdk context --reset <key>` or context amiId, then deploy.
        if self.settings.ami_id:
            return ec2.MachineImage.generic_linux({self.region: self.settings.ami_id})
        return ec2.MachineImage.latest_amazon_linux2023(
            cpu_type=ec2.AmazonLinuxCpuType.X86_64, cached_in_context=True
        )

    def _nodes(self) -> autoscaling.AutoScalingGroup:
        s = self.settings
        role = self._node_role()
        # Filled once the group exists: the bootstrap signals the group's CloudFormation resource.
        user_data = ec2.UserData.for_linux()
        launch_template = ec2.LaunchTemplate(
            self,
            "NodeLaunchTemplate",
            machine_image=self._machine_image(),
            instance_type=ec2.InstanceType(s.instance_type),
            role=role,
            user_data=user_data,
            security_group=self.node_security_group,
            require_imdsv2=True,
            detailed_monitoring=True,
            block_devices=[
                ec2.BlockDevice(
                    device_name="/dev/xvda",
                    volume=ec2.BlockDeviceVolume.ebs(
                        16,
                        encrypted=True,
                        volume_type=ec2.EbsDeviceVolumeType.GP3,
                        delete_on_termination=True,
                    ),
                ),
                ec2.BlockDevice(
                    device_name=DATA_DEVICE,
                    volume=ec2.BlockDeviceVolume.ebs(
                        s.data_volume_gib,
                        encrypted=True,
                        volume_type=ec2.EbsDeviceVolumeType.GP3,
                        delete_on_termination=True,
                    ),
                ),
            ],
        )
        group = autoscaling.AutoScalingGroup(
            self,
            "Nodes",
            vpc=self.vpc,
            vpc_subnets=self.node_subnets,
            launch_template=launch_template,
            min_capacity=s.node_count,
            # One more than needed only while a replacement launches before its predecessor terminates.
            max_capacity=s.node_count + 1,
            # EC2 status checks only, never the load balancer's: under pause_minority a node on the
            # minority side of a partition closes its listeners and waits to rejoin; an ELB health check
            # would have the group terminate it (its data volume deleted, its member left stale) and, in a
            # whole-cluster pause, replace every node. The NodesBelowExpected alarm (cluster_monitoring)
            # tells a human instead; a dead instance still fails its EC2 checks and is replaced.
            health_checks=autoscaling.HealthChecks.ec2(grace_period=Duration.minutes(15)),
            group_metrics=[autoscaling.GroupMetrics.all()],
            # A node signals only once it is a member of the cluster and losing any one node is safe
            # again (node_bootstrap.sh, become_member): with one node per batch and every old node in
            # service until its successor signalled, a rolling update never takes a second node before
            # the first replacement joined and synchronised (launch before terminate).
            signals=autoscaling.Signals.wait_for_all(timeout=Duration.minutes(45)),
            update_policy=autoscaling.UpdatePolicy.rolling_update(
                max_batch_size=1,
                min_instances_in_service=s.node_count,
                pause_time=Duration.minutes(45),
                wait_on_resource_signals=True,
            ),
        )
        # Every launch waits in Pending:Wait, out of the load balancer, until the node's bootstrap completes
        # the action: CONTINUE once it is a member and its queues caught up (the moment it signals
        # CloudFormation), ABANDON if it fails. So AZRebalance, an instance refresh and the group's own
        # replacements take an old node only after its successor joined, as the rolling update does. The
        # bootstrap heartbeats every minute; a node that stops heartbeating (it hung or died before its
        # script ran) is abandoned 15 minutes later and replaced.
        group.add_lifecycle_hook(
            "JoinCluster",
            lifecycle_hook_name=LAUNCH_HOOK_NAME,
            lifecycle_transition=autoscaling.LifecycleTransition.INSTANCE_LAUNCHING,
            heartbeat_timeout=Duration.minutes(15),
            default_result=autoscaling.DefaultResult.ABANDON,
        )
        # The leaving node's own rabbitmq-lifecycle service grows its queues onto a spare node, drains it and
        # has it forgotten by a peer, then completes the action; a dead node is forgotten by the next node
        # that boots.
        group.add_lifecycle_hook(
            "LeaveCluster",
            lifecycle_hook_name=LIFECYCLE_HOOK_NAME,
            lifecycle_transition=autoscaling.LifecycleTransition.INSTANCE_TERMINATING,
            heartbeat_timeout=Duration.minutes(15),
            default_result=autoscaling.DefaultResult.CONTINUE,
        )
        asg_resource = group.node.default_child
        assert isinstance(asg_resource, autoscaling.CfnAutoScalingGroup)
        add_node_bootstrap(
            user_data,
            {
                "CLUSTER_NAME": s.cluster_name,
                "AWS_REGION": Aws.REGION,
                "COOKIE_SECRET_ARN": self.cookie_secret.secret_arn,
                "ADMIN_SECRET_ARN": self.admin_secret.secret_arn,
                "BALANCER_SECRET_ARN": self.balancer_secret.secret_arn,
                "RABBITMQ_VERSION": s.rabbitmq_version,
                "ERLANG_VERSION": s.erlang_version,
                "QUEUE_TYPE": s.queue_type,
                "NODE_COUNT": str(s.node_count),
                "LIFECYCLE_HOOK_NAME": LIFECYCLE_HOOK_NAME,
                "LAUNCH_HOOK_NAME": LAUNCH_HOOK_NAME,
                "LOG_GROUP_NAME": self.node_log_group.log_group_name,
                "DATA_DEVICE": DATA_DEVICE,
                "METRICS_NAMESPACE": METRICS_NAMESPACE,
                "CFN_STACK_NAME": Aws.STACK_NAME,
                "CFN_RESOURCE_ID": self.get_logical_id(asg_resource),
            },
        )
        Tags.of(group).add(s.ssm_tag_key, self.ssm_tag_value, apply_to_launched_instances=True)
        Tags.of(launch_template).add("Name", f"rabbitmq-{s.cluster_name}")
        Tags.of(group).add("Name", f"rabbitmq-{s.cluster_name}", apply_to_launched_instances=True)
        NagSuppressions.add_resource_suppressions(
            group,
            [
                NagPackSuppression(
                    id="AwsSolutions-AS3",
                    reason="Losing a node is what operators act on, and the NodesBelowExpected alarm reports "
                    "it through the cluster's alarm topic; launch/terminate notifications would only repeat it.",
                )
            ],
        )
        return group

    # --- load balancer ----------------------------------------------------------------------------------

    def _load_balancer(
        self,
    ) -> tuple[elbv2.NetworkLoadBalancer, elbv2.NetworkTargetGroup, elbv2.NetworkTargetGroup]:
        load_balancer = elbv2.NetworkLoadBalancer(
            self,
            "LoadBalancer",
            vpc=self.vpc,
            vpc_subnets=self.node_subnets,
            internet_facing=False,
            cross_zone_enabled=True,
            security_groups=[self.load_balancer_security_group],
        )
        NagSuppressions.add_resource_suppressions(
            load_balancer,
            [
                NagPackSuppression(
                    id="AwsSolutions-ELB2",
                    reason="NLB access logs are written for TLS listeners only; these listeners are TCP "
                    "(AMQP 5672, management 15672), so a log bucket would stay empty. VPC flow logs "
                    "record rejected connections.",
                )
            ],
        )
        amqp = load_balancer.add_listener("Amqp", port=AMQP_PORT, protocol=elbv2.Protocol.TCP).add_targets(
            "AmqpNodes",
            port=AMQP_PORT,
            protocol=elbv2.Protocol.TCP,
            targets=[self.nodes],
            deregistration_delay=Duration.seconds(30),
            health_check=elbv2.HealthCheck(
                protocol=elbv2.Protocol.TCP,
                port=str(AMQP_PORT),
                interval=Duration.seconds(10),
                healthy_threshold_count=3,
                unhealthy_threshold_count=3,
            ),
        )
        management = load_balancer.add_listener(
            "Management", port=MANAGEMENT_PORT, protocol=elbv2.Protocol.TCP
        ).add_targets(
            "ManagementNodes",
            port=MANAGEMENT_PORT,
            protocol=elbv2.Protocol.TCP,
            targets=[self.nodes],
            deregistration_delay=Duration.seconds(30),
            # The management UI's index answers 200 without credentials once the plugin is up.
            health_check=elbv2.HealthCheck(
                protocol=elbv2.Protocol.HTTP,
                port=str(MANAGEMENT_PORT),
                path="/",
                healthy_http_codes="200",
                interval=Duration.seconds(10),
                healthy_threshold_count=3,
                unhealthy_threshold_count=3,
            ),
        )
        return load_balancer, amqp, management

    # --- alarms -----------------------------------------------------------------------------------------

    def _alarms(self) -> sns.Topic:
        _key, topic = encrypted_topic(
            self,
            "AlarmTopic",
            purpose=f"alarms of the RabbitMQ cluster {self.cluster_name}",
            email=self.settings.notification_email,
        )
        self.alarms = cluster_alarms(
            self,
            cluster_name=self.cluster_name,
            node_count=self.settings.node_count,
            amqp_targets=self.amqp_target_group,
            topic=topic,
        )
        self.dashboard = cluster_dashboard(
            self, cluster_name=self.cluster_name, node_count=self.settings.node_count, alarms=self.alarms
        )
        return topic

    # --- outputs ----------------------------------------------------------------------------------------

    def _outputs(self) -> None:
        outputs: Sequence[tuple[str, str, str]] = (
            ("ClusterName", self.cluster_name, "The cluster's name (the balancer's clusterName)"),
            ("AmqpEndpoint", self.amqp_endpoint, "AMQP through the internal load balancer"),
            ("ManagementUrl", self.management_url, "Management API through the internal load balancer"),
            ("AdminSecretArn", self.admin_secret.secret_arn, "Secret {username, password} of the admin"),
            ("ClientSecurityGroupId", self.client_security_group.security_group_id, "Trusted clients' SG"),
            ("VpcId", self.vpc.vpc_id, "The cluster's VPC"),
            ("NodeSubnetIds", ",".join(self.node_subnet_ids), "The nodes' (and the balancer's) subnets"),
            (
                "NodesAutoScalingGroupName",
                self.nodes.auto_scaling_group_name,
                "The nodes' Auto Scaling group",
            ),
            ("SsmTagKey", self.ssm_tag_key, "Tag key of the nodes (SSM Run Command target)"),
            ("SsmTagValue", self.ssm_tag_value, "Tag value of the nodes"),
            ("AlarmTopicArn", self.alarm_topic.topic_arn, "Topic of the cluster's alarms"),
        )
        for name, value, description in outputs:
            CfnOutput(self, name, value=value, description=description)
