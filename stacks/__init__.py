"""The CDK stacks of the queue balancer: infrastructure only, no balancing logic.

- ``cluster_stack.ClusterStack``: an HA RabbitMQ cluster on EC2 (VPC over three AZs, Auto Scaling group,
  internal Network Load Balancer, secrets, alarms).
- ``balancer_stack.BalancerStack``: the balancing workflow (Lambdas discovered from the ASL, Step Functions,
  DynamoDB lifecycle table, SNS, EventBridge schedule, dashboard) against any cluster.
"""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
