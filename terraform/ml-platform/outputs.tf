output "releases" {
  description = "Installed charts and their versions."
  value = {
    for r in [
      helm_release.cert_manager, helm_release.strimzi, helm_release.kserve_crd,
      helm_release.kserve, helm_release.kuberay, helm_release.kube_prometheus_stack,
      helm_release.mlflow,
    ] : r.name => r.version
  }
}

output "mlflow_tracking_uri" {
  description = "SPAMOPS_MLFLOW_TRACKING_URI of the production overlay."
  value       = "http://mlflow.mlflow.svc.cluster.local:5000"
}
