terraform {
  required_version = ">= 1.6"
  required_providers {
    azurerm = {
      source  = "hashicorp/azurerm"
      version = "~> 4.20"
    }
    helm = {
      source  = "hashicorp/helm"
      version = "~> 3.0"
    }
  }
  # terraform init -backend-config=environments/<env>.backend.hcl
  backend "azurerm" {}
}

provider "azurerm" {
  features {}
  subscription_id = var.subscription_id
}

# The cluster comes from base-infra's state; Entra ID login through kubelogin
# (the cluster has local accounts disabled).
data "terraform_remote_state" "base" {
  backend = "azurerm"
  config = {
    resource_group_name  = var.state_resource_group_name
    storage_account_name = var.state_storage_account_name
    container_name       = "tfstate"
    key                  = "${var.environment}/base-infra.tfstate"
    use_azuread_auth     = true
  }
}

provider "helm" {
  kubernetes = {
    host                   = data.terraform_remote_state.base.outputs.aks_host
    cluster_ca_certificate = base64decode(data.terraform_remote_state.base.outputs.aks_cluster_ca_certificate)
    exec = {
      api_version = "client.authentication.k8s.io/v1beta1"
      command     = "kubelogin"
      args        = ["get-token", "--login", "azurecli", "--server-id", "6dae42f8-4368-4678-94ff-3960e28e3630"]
    }
  }
}
