output "resource_group_name" {
  description = "Resource group of the environment."
  value       = azurerm_resource_group.main.name
}

output "aks_name" {
  description = "AKS cluster name (az aks get-credentials)."
  value       = azurerm_kubernetes_cluster.main.name
}

output "aks_host" {
  description = "AKS API server."
  value       = azurerm_kubernetes_cluster.main.kube_config[0].host
  sensitive   = true
}

output "aks_cluster_ca_certificate" {
  description = "AKS API server CA (base64)."
  value       = azurerm_kubernetes_cluster.main.kube_config[0].cluster_ca_certificate
  sensitive   = true
}

output "aks_oidc_issuer_url" {
  description = "OIDC issuer for workload identity."
  value       = azurerm_kubernetes_cluster.main.oidc_issuer_url
}

output "acr_login_server" {
  description = "Registry the images are pushed to (kustomize images newName)."
  value       = azurerm_container_registry.main.login_server
}

output "storage_account_name" {
  description = "Storage account of MLflow artifacts and feature data."
  value       = azurerm_storage_account.main.name
}

output "mlflow_artifacts_uri" {
  description = "MLflow --artifacts-destination."
  value       = "wasbs://${azurerm_storage_container.mlflow_artifacts.name}@${azurerm_storage_account.main.name}.blob.core.windows.net/"
}

output "feature_data_uri" {
  description = "Feast offline store location."
  value       = "abfss://${azurerm_storage_container.feature_data.name}@${azurerm_storage_account.main.name}.dfs.core.windows.net/"
}

output "redis_hostname" {
  description = "Azure Cache for Redis host (TLS port 6380); the URL is in Key Vault."
  value       = azurerm_redis_cache.main.hostname
}

output "key_vault_name" {
  description = "Key Vault holding spamops-approval-secret and spamops-redis-url."
  value       = azurerm_key_vault.main.name
}
