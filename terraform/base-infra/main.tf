# Base infrastructure of one spamops environment on Azure: AKS (system + workload
# pools), ACR, a storage account (MLflow artifacts, feature data), Azure Cache for
# Redis (the Feast online store) and a Key Vault for the secrets.

locals {
  name    = "${var.name_prefix}-${var.environment}"
  compact = lower(replace("${var.name_prefix}${var.environment}", "-", ""))
  tags    = merge({ project = "spamops", environment = var.environment }, var.tags)
}

data "azurerm_client_config" "current" {}

resource "azurerm_resource_group" "main" {
  name     = "rg-${local.name}"
  location = var.location
  tags     = local.tags
}

resource "azurerm_log_analytics_workspace" "main" {
  name                = "log-${local.name}"
  location            = azurerm_resource_group.main.location
  resource_group_name = azurerm_resource_group.main.name
  sku                 = "PerGB2018"
  retention_in_days   = 30
  tags                = local.tags
}

# --------------------------------------------------------------------------- AKS

resource "azurerm_kubernetes_cluster" "main" {
  #checkov:skip=CKV_AZURE_117:OS disks are ephemeral and host encryption is on; a customer-managed disk encryption set needs a key-rotation process we do not have yet
  #checkov:skip=CKV_AZURE_6:no VNet or private endpoints in this first cut: public endpoint, Entra ID auth and TLS only; private networking is the documented next step (deploy/README.md)
  #checkov:skip=CKV_AZURE_115:no VNet or private endpoints in this first cut: public endpoint, Entra ID auth and TLS only; private networking is the documented next step (deploy/README.md)
  name                              = "aks-${local.name}"
  location                          = azurerm_resource_group.main.location
  resource_group_name               = azurerm_resource_group.main.name
  dns_prefix                        = local.name
  kubernetes_version                = var.kubernetes_version
  sku_tier                          = "Standard"
  automatic_upgrade_channel         = "patch"
  node_os_upgrade_channel           = "NodeImage"
  local_account_disabled            = true
  role_based_access_control_enabled = true
  oidc_issuer_enabled               = true
  workload_identity_enabled         = true
  azure_policy_enabled              = true
  private_cluster_enabled           = false

  default_node_pool {
    name                         = "system"
    vm_size                      = var.system_node_vm_size
    node_count                   = var.system_node_count
    zones                        = ["1", "2", "3"]
    only_critical_addons_enabled = true
    os_disk_type                 = "Ephemeral"
    host_encryption_enabled      = true
    max_pods                     = 50
    upgrade_settings {
      max_surge = "33%"
    }
  }

  identity {
    type = "SystemAssigned"
  }

  azure_active_directory_role_based_access_control {
    azure_rbac_enabled     = true
    admin_group_object_ids = var.admin_group_object_ids
  }

  network_profile {
    network_plugin      = "azure"
    network_plugin_mode = "overlay"
    network_policy      = "cilium"
    network_data_plane  = "cilium"
  }

  oms_agent {
    log_analytics_workspace_id = azurerm_log_analytics_workspace.main.id
  }

  key_vault_secrets_provider {
    secret_rotation_enabled = true
  }

  storage_profile {
    file_driver_enabled = true
    blob_driver_enabled = true
  }

  tags = local.tags
}

resource "azurerm_kubernetes_cluster_node_pool" "workload" {
  name                    = "workload"
  kubernetes_cluster_id   = azurerm_kubernetes_cluster.main.id
  vm_size                 = var.workload_node_vm_size
  zones                   = ["1", "2", "3"]
  auto_scaling_enabled    = true
  min_count               = var.workload_min_count
  max_count               = var.workload_max_count
  os_disk_type            = "Ephemeral"
  host_encryption_enabled = true
  max_pods                = 50
  mode                    = "User"
  node_labels = {
    "spamops.io/pool" = "workload"
  }
  upgrade_settings {
    max_surge = "33%"
  }
  tags = local.tags
}

# --------------------------------------------------------------------------- ACR

resource "azurerm_container_registry" "main" {
  #checkov:skip=CKV_AZURE_165:one region per environment; geo-replication when a second region exists
  #checkov:skip=CKV_AZURE_166:quarantine blocks pulls until a scanner marks images; CI has no scanner wired to ACR yet (Defender for Containers is the follow-up)
  #checkov:skip=CKV_AZURE_139:no VNet or private endpoints in this first cut: public endpoint, Entra ID auth and TLS only; private networking is the documented next step (deploy/README.md)
  name                          = "acr${local.compact}"
  location                      = azurerm_resource_group.main.location
  resource_group_name           = azurerm_resource_group.main.name
  sku                           = "Premium"
  admin_enabled                 = false
  public_network_access_enabled = true
  zone_redundancy_enabled       = true
  data_endpoint_enabled         = true
  retention_policy_in_days      = 30
  trust_policy_enabled          = true
  tags                          = local.tags
}

resource "azurerm_role_assignment" "aks_acr_pull" {
  scope                            = azurerm_container_registry.main.id
  role_definition_name             = "AcrPull"
  principal_id                     = azurerm_kubernetes_cluster.main.kubelet_identity[0].object_id
  skip_service_principal_aad_check = true
}

# --------------------------------------------------------------------------- storage

resource "azurerm_storage_account" "main" {
  #checkov:skip=CKV_AZURE_59:no VNet or private endpoints in this first cut: public endpoint, Entra ID auth and TLS only; private networking is the documented next step (deploy/README.md)
  #checkov:skip=CKV2_AZURE_33:no VNet or private endpoints in this first cut: public endpoint, Entra ID auth and TLS only; private networking is the documented next step (deploy/README.md)
  #checkov:skip=CKV_AZURE_33:the account has no queues
  #checkov:skip=CKV2_AZURE_40:MLflow's Azure Blob store authenticates with a connection string (Secret mlflow-artifacts); move it to workload identity, then disable shared keys
  #checkov:skip=CKV2_AZURE_1:Microsoft-managed keys; customer-managed keys need the Key Vault key rotation process we do not have yet
  name                            = "st${local.compact}"
  location                        = azurerm_resource_group.main.location
  resource_group_name             = azurerm_resource_group.main.name
  account_tier                    = "Standard"
  account_replication_type        = "GZRS"
  min_tls_version                 = "TLS1_2"
  https_traffic_only_enabled      = true
  allow_nested_items_to_be_public = false
  shared_access_key_enabled       = true
  blob_properties {
    versioning_enabled = true
    delete_retention_policy {
      days = 14
    }
    container_delete_retention_policy {
      days = 14
    }
  }
  sas_policy {
    expiration_period = "01.00:00:00"
  }
  tags = local.tags
}

resource "azurerm_storage_container" "mlflow_artifacts" {
  #checkov:skip=CKV2_AZURE_21:blob read logging (diagnostic settings to Log Analytics) is a follow-up; versioning and soft delete are on
  name                  = "mlflow-artifacts"
  storage_account_id    = azurerm_storage_account.main.id
  container_access_type = "private"
}

resource "azurerm_storage_container" "feature_data" {
  #checkov:skip=CKV2_AZURE_21:blob read logging (diagnostic settings to Log Analytics) is a follow-up; versioning and soft delete are on
  name                  = "feature-data"
  storage_account_id    = azurerm_storage_account.main.id
  container_access_type = "private"
}

# --------------------------------------------------------------------------- Redis

resource "azurerm_redis_cache" "main" {
  #checkov:skip=CKV_AZURE_89:no VNet or private endpoints in this first cut: public endpoint, Entra ID auth and TLS only; private networking is the documented next step (deploy/README.md)
  name                          = "redis-${local.name}"
  location                      = azurerm_resource_group.main.location
  resource_group_name           = azurerm_resource_group.main.name
  capacity                      = var.redis_capacity
  family                        = var.redis_sku == "Premium" ? "P" : "C"
  sku_name                      = var.redis_sku
  non_ssl_port_enabled          = false
  minimum_tls_version           = "1.2"
  public_network_access_enabled = true
  redis_configuration {
    maxmemory_policy = "allkeys-lru"
  }
  tags = local.tags
}

# --------------------------------------------------------------------------- Key Vault

resource "azurerm_key_vault" "main" {
  #checkov:skip=CKV_AZURE_109:no VNet or private endpoints in this first cut: public endpoint, Entra ID auth and TLS only; private networking is the documented next step (deploy/README.md)
  #checkov:skip=CKV_AZURE_189:no VNet or private endpoints in this first cut: public endpoint, Entra ID auth and TLS only; private networking is the documented next step (deploy/README.md)
  #checkov:skip=CKV2_AZURE_32:no VNet or private endpoints in this first cut: public endpoint, Entra ID auth and TLS only; private networking is the documented next step (deploy/README.md)
  name                          = "kv-${local.compact}"
  location                      = azurerm_resource_group.main.location
  resource_group_name           = azurerm_resource_group.main.name
  tenant_id                     = data.azurerm_client_config.current.tenant_id
  sku_name                      = "standard"
  rbac_authorization_enabled    = true
  purge_protection_enabled      = true
  soft_delete_retention_days    = 30
  public_network_access_enabled = true
  network_acls {
    bypass         = "AzureServices"
    default_action = "Allow"
  }
  tags = local.tags
}

resource "azurerm_role_assignment" "kv_admin" {
  scope                = azurerm_key_vault.main.id
  role_definition_name = "Key Vault Secrets Officer"
  principal_id         = data.azurerm_client_config.current.object_id
}

# The AKS Key Vault CSI driver identity reads the secrets (SecretProviderClass).
resource "azurerm_role_assignment" "aks_kv_reader" {
  scope                = azurerm_key_vault.main.id
  role_definition_name = "Key Vault Secrets User"
  principal_id         = azurerm_kubernetes_cluster.main.key_vault_secrets_provider[0].secret_identity[0].object_id
}

resource "random_password" "approval_secret" {
  length  = 48
  special = false
}

resource "azurerm_key_vault_secret" "approval_secret" {
  name            = "spamops-approval-secret"
  value           = random_password.approval_secret.result
  key_vault_id    = azurerm_key_vault.main.id
  content_type    = "text/plain"
  expiration_date = timeadd(plantimestamp(), "8760h")
  depends_on      = [azurerm_role_assignment.kv_admin]
  lifecycle {
    ignore_changes = [expiration_date]
  }
}

resource "azurerm_key_vault_secret" "redis_url" {
  name            = "spamops-redis-url"
  value           = "rediss://:${azurerm_redis_cache.main.primary_access_key}@${azurerm_redis_cache.main.hostname}:${azurerm_redis_cache.main.ssl_port}/0"
  key_vault_id    = azurerm_key_vault.main.id
  content_type    = "text/plain"
  expiration_date = timeadd(plantimestamp(), "8760h")
  depends_on      = [azurerm_role_assignment.kv_admin]
  lifecycle {
    ignore_changes = [expiration_date]
  }
}
