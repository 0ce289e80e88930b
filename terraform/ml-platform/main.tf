# The platform engines spamops runs on, as Helm releases into the AKS cluster of
# base-infra: cert-manager (KServe's webhooks), Strimzi (Kafka), KServe (Triton
# InferenceServices, raw deployment mode), KubeRay, kube-prometheus-stack (the
# ServiceMonitors) and MLflow. The spamops manifests themselves are applied with
# `kubectl apply -k deploy/overlays/<env>` afterwards.

locals {
  base = data.terraform_remote_state.base.outputs
}

resource "helm_release" "cert_manager" {
  name             = "cert-manager"
  namespace        = "cert-manager"
  create_namespace = true
  repository       = "https://charts.jetstack.io"
  chart            = "cert-manager"
  version          = var.chart_versions["cert_manager"]
  set              = [{ name = "crds.enabled", value = "true" }]
}

resource "helm_release" "strimzi" {
  name             = "strimzi"
  namespace        = "strimzi"
  create_namespace = true
  repository       = "oci://quay.io/strimzi-helm"
  chart            = "strimzi-kafka-operator"
  version          = var.chart_versions["strimzi"]
  set              = [{ name = "watchAnyNamespace", value = "true" }]
}

resource "helm_release" "kserve_crd" {
  name             = "kserve-crd"
  namespace        = "kserve"
  create_namespace = true
  repository       = "oci://ghcr.io/kserve/charts"
  chart            = "kserve-crd"
  version          = var.chart_versions["kserve"]
}

resource "helm_release" "kserve" {
  name       = "kserve"
  namespace  = "kserve"
  repository = "oci://ghcr.io/kserve/charts"
  chart      = "kserve"
  version    = var.chart_versions["kserve"]
  set = [
    { name = "kserve.controller.deploymentMode", value = "RawDeployment" },
  ]
  depends_on = [helm_release.kserve_crd, helm_release.cert_manager]
}

resource "helm_release" "kuberay" {
  name             = "kuberay-operator"
  namespace        = "kuberay"
  create_namespace = true
  repository       = "https://ray-project.github.io/kuberay-helm/"
  chart            = "kuberay-operator"
  version          = var.chart_versions["kuberay"]
}

resource "helm_release" "kube_prometheus_stack" {
  name             = "kube-prometheus-stack"
  namespace        = "monitoring"
  create_namespace = true
  repository       = "https://prometheus-community.github.io/helm-charts"
  chart            = "kube-prometheus-stack"
  version          = var.chart_versions["kube_prometheus_stack"]
  # ServiceMonitors of spamops carry release=kube-prometheus-stack.
  set = [
    { name = "prometheus.prometheusSpec.serviceMonitorSelectorNilUsesHelmValues", value = "true" },
  ]
}

resource "helm_release" "mlflow" {
  name             = "mlflow"
  namespace        = "mlflow"
  create_namespace = true
  repository       = "https://community-charts.github.io/helm-charts"
  chart            = "mlflow"
  version          = var.chart_versions["mlflow"]
  values = [yamlencode({
    service = { port = 5000 }
    backendStore = {
      existingDatabaseSecret = { name = var.mlflow_backend_store_secret }
    }
    artifactRoot = {
      proxiedArtifactStorage = true
      azureBlob = {
        enabled        = true
        container      = "mlflow-artifacts"
        storageAccount = local.base.storage_account_name
        existingSecret = { name = "mlflow-artifacts", keyOfConnectionString = "connection-string" }
      }
    }
    serviceMonitor = { enabled = true }
  })]
  depends_on = [helm_release.kube_prometheus_stack]
}
