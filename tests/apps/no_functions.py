class App:
    def helper(self, x: int) -> int:
        return x
