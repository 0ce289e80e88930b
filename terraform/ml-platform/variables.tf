variable "subscription_id" {
  description = "Azure subscription of the environment."
  type        = string
}

variable "environment" {
  description = "staging or production (selects base-infra's state)."
  type        = string
}

variable "state_resource_group_name" {
  description = "Resource group of the Terraform state storage account."
  type        = string
  default     = "rg-spamops-tfstate"
}

variable "state_storage_account_name" {
  description = "Storage account holding the Terraform state."
  type        = string
  default     = "stspamopstfstate"
}

variable "chart_versions" {
  description = "Helm chart versions (pinned; bump deliberately)."
  type        = map(string)
  default = {
    cert_manager          = "v1.18.2"
    strimzi               = "0.48.0"
    kserve                = "v0.15.2"
    kuberay               = "1.4.2"
    kube_prometheus_stack = "77.5.0"
    mlflow                = "1.7.3"
  }
}

variable "mlflow_backend_store_secret" {
  description = "Existing Secret in namespace mlflow with the PostgreSQL URI (key uri)."
  type        = string
  default     = "mlflow-db"
}
