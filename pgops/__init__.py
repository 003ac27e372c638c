"""Python helpers of the pgops Ansible project."""
