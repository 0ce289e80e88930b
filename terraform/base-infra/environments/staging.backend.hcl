# terraform init -backend-config=environments/staging.backend.hcl
resource_group_name  = "rg-spamops-tfstate"
storage_account_name = "stspamopstfstate"
container_name       = "tfstate"
key                  = "staging/base-infra.tfstate"
use_azuread_auth     = true
