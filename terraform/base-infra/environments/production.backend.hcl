# terraform init -backend-config=environments/production.backend.hcl
resource_group_name  = "rg-spamops-tfstate"
storage_account_name = "stspamopstfstate"
container_name       = "tfstate"
key                  = "production/base-infra.tfstate"
use_azuread_auth     = true
