variable "subscription_id" {
  description = "Azure subscription to deploy into."
  type        = string
}

variable "environment" {
  description = "staging or production."
  type        = string
  validation {
    condition     = contains(["staging", "production"], var.environment)
    error_message = "environment must be staging or production."
  }
}

variable "location" {
  description = "Azure region."
  type        = string
  default     = "westeurope"
}

variable "name_prefix" {
  description = "Prefix of every resource name (letters and digits, used in global names)."
  type        = string
  default     = "spamops"
}

variable "kubernetes_version" {
  description = "AKS Kubernetes version."
  type        = string
  default     = "1.33"
}

variable "system_node_vm_size" {
  description = "VM size of the system node pool."
  type        = string
  default     = "Standard_D4ds_v5"
}

variable "system_node_count" {
  description = "Nodes of the system pool (spread over zones)."
  type        = number
  default     = 3
}

variable "workload_node_vm_size" {
  description = "VM size of the workload pool (services, Kafka, Triton, Ray)."
  type        = string
  default     = "Standard_D8ds_v5"
}

variable "workload_min_count" {
  description = "Workload pool autoscaler minimum."
  type        = number
  default     = 2
}

variable "workload_max_count" {
  description = "Workload pool autoscaler maximum."
  type        = number
  default     = 10
}

variable "redis_sku" {
  description = "Azure Cache for Redis SKU: Basic, Standard or Premium."
  type        = string
  default     = "Standard"
}

variable "redis_capacity" {
  description = "Azure Cache for Redis size (0-6)."
  type        = number
  default     = 1
}

variable "admin_group_object_ids" {
  description = "Entra ID groups that administer the cluster (AKS RBAC)."
  type        = list(string)
  default     = []
}

variable "tags" {
  description = "Tags on every resource."
  type        = map(string)
  default     = {}
}
